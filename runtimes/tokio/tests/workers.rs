//! Workers in two OS processes take jobs from one data directory: each job
//! is done exactly once when none fails.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{listening_pair, runtime, Pair};
use futures_lite::StreamExt;
use peermq::Config;
use peermq_tokio::{Mailbox, Mq, MqEvent, RetryPolicy, TokioRuntime};

/// Tells the child test what to do: `<data dir>|<output file>`.
const CHILD_ENV: &str = "PEERMQ_TEST_CHILD_WORKER";
const JOBS: usize = 300;

/// One worker process. Ignored in normal runs; the test below starts two.
#[test]
#[ignore = "run as a child process by two_worker_processes_do_each_job_exactly_once"]
fn child_process_worker() {
    let spec = std::env::var(CHILD_ENV).expect("started by the parent test");
    let (dir, out) = spec.split_once('|').expect("dir|output");
    runtime().block_on(async {
        let mq = Mq::builder(dir)
            .local_discovery(false)
            .open(TokioRuntime::new())
            .expect("open the shared data directory");
        let worker = mq.worker(RetryPolicy::default(), Duration::from_secs(60));
        let mut done = std::fs::File::create(out).expect("create the output file");
        loop {
            let jobs = worker.take(4).await.expect("take");
            if jobs.is_empty() {
                let unread = mq.categories().await.expect("categories")[0];
                assert_eq!(unread.mailbox, Mailbox::Unread);
                if unread.messages == 0 {
                    break;
                }
                // The other worker holds the rest: wait for it.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            for job in jobs {
                writeln!(done, "{}", String::from_utf8(job.data).unwrap()).unwrap();
                assert!(worker.archive(&job.lease).await.expect("archive"));
            }
        }
        mq.shutdown().await.unwrap();
    });
}

#[test]
fn two_worker_processes_do_each_job_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let Pair { a, b, ida, .. } = listening_pair(tmp.path(), Config::default()).await;
        let jobs: Vec<Vec<u8>> = (0..JOBS).map(|i| format!("job {i}").into_bytes()).collect();
        b.send_batch(ida, jobs).await.unwrap();
        let mut events = b.events();
        b.connect(ida).await.unwrap();
        let mut acked = 0;
        while acked < JOBS as u64 {
            if let Some(MqEvent::Acked { start, end, .. }) = events.next().await {
                acked += end - start;
            }
        }
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    });

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            let out = tmp.path().join(format!("done-{i}"));
            let child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "child_process_worker",
                    "--nocapture",
                ])
                .env(
                    CHILD_ENV,
                    format!("{}|{}", tmp.path().join("a").display(), out.display()),
                )
                .spawn()
                .expect("start a worker process");
            (child, out)
        })
        .collect();
    let mut done = Vec::new();
    for (mut child, out) in children {
        assert!(child.wait().unwrap().success(), "a worker failed");
        let text = std::fs::read_to_string(out).unwrap();
        done.push(text.lines().map(str::to_string).collect::<Vec<_>>());
    }
    assert!(
        done.iter().all(|d| !d.is_empty()),
        "both workers got work: {:?}",
        done.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut all: Vec<String> = done.concat();
    all.sort();
    let mut want: Vec<String> = (0..JOBS).map(|i| format!("job {i}")).collect();
    want.sort();
    assert_eq!(all, want, "every job done exactly once");
}
