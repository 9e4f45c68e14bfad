//! Workers: they take messages with leases, then archive them, release
//! them as failed, drop them (a crash mid-job: the lease lapses), or
//! archive them after their lease lapsed (a pause). The oracle checks
//! every hand-out: never to two live leases, never before a release's
//! delay, with the right delivery count, and dead letters after exactly
//! the policy's maximum.

use std::collections::BTreeMap;
use std::time::Duration;

use peermq::{DeadReason, Lease, Released, RetryPolicy};

use crate::oracle::Failure;
use crate::plan::Dice;

use super::Sim;

/// The retry policy of every simulated worker.
fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff: vec![Duration::from_secs(2), Duration::from_secs(5)],
        max_deliveries: 3,
    }
}

/// What the oracle knows of one taken message.
#[derive(Clone, Copy, Debug, Default)]
struct Job {
    deliveries: u32,
    /// The last lease: token and deadline.
    lease: Option<(u64, u64)>,
    /// Not to be handed out before (a release's delay).
    retry_at: u64,
    dead: bool,
}

/// The workers' oracle, per (node, sender, seq).
#[derive(Default)]
pub(super) struct Jobs {
    jobs: BTreeMap<(usize, usize, u64), Job>,
    /// Leases of paused workers, per node: archived late, at the node's
    /// next work once they lapsed.
    late: BTreeMap<usize, Vec<Lease>>,
}

impl Jobs {
    /// Message `seq` from `from` went to the dead letters at `node`
    /// other than by its deliveries: it must not be handed out again.
    pub(super) fn mark_dead(&mut self, node: usize, from: usize, seq: u64) {
        self.jobs.entry((node, from, seq)).or_default().dead = true;
    }
}

impl Sim<'_> {
    pub(super) fn work(
        &mut self,
        node: usize,
        max: usize,
        lease: u64,
        ok: u8,
        fail: u8,
        seed: u64,
    ) {
        // A rogue's restored store forgets its leases: nothing to check.
        if !self.live(node) || self.oracle.is_rogue(node) {
            return;
        }
        let ts = self.wall(node);
        let now = ts.as_micros();
        let (lapsed, waiting): (Vec<Lease>, Vec<Lease>) = self
            .jobs
            .late
            .remove(&node)
            .unwrap_or_default()
            .into_iter()
            .partition(|l| l.deadline.as_micros() <= now);
        self.jobs.late.insert(node, waiting);
        for l in lapsed {
            self.archive_job(node, &l, true);
        }
        let policy = policy();
        let r = match self.slots[node].node.as_mut() {
            Some(x) => x.take(max, Duration::from_micros(lease), &policy, ts),
            None => return,
        };
        let Some(taken) = self.node_result(node, "take", r) else {
            return;
        };
        if !taken.is_empty() {
            let list: Vec<String> = taken
                .iter()
                .map(|t| format!("{}#{}", t.lease.seq, t.delivery))
                .collect();
            self.note(format_args!("n{node} took {}", list.join(" ")));
        }
        let mut d = Dice::new(seed, "work");
        for t in taken {
            let l = t.lease;
            let from = self.peer_index(&l.from);
            let checked = self
                .oracle
                .on_record(node, from, l.seq, &t.data, true)
                .and_then(|()| self.check_due(node, from, l.seq));
            if let Err(f) = checked {
                return self.fail(f);
            }
            let key = (node, from, l.seq);
            let job = self.jobs.jobs.get(&key).copied().unwrap_or_default();
            let broken = if job.dead {
                Some(("dead-redelivered", "it was dead-lettered".to_string()))
            } else if let Some((_, deadline)) = job.lease.filter(|&(_, d)| d > now) {
                Some((
                    "double-lease",
                    format!("its lease until {deadline} is live"),
                ))
            } else if job.retry_at > now {
                Some((
                    "early-redelivery",
                    format!("it was released until {}", job.retry_at),
                ))
            } else if t.delivery != job.deliveries + 1 {
                Some((
                    "delivery-count",
                    format!("it had {} deliveries", job.deliveries),
                ))
            } else if t.delivery > policy.max_deliveries {
                Some((
                    "dead-letter",
                    format!("the maximum is {}", policy.max_deliveries),
                ))
            } else {
                None
            };
            if let Some((oracle, why)) = broken {
                return self.fail(Failure::new(
                    oracle,
                    format!(
                        "n{node} handed out message {} from n{from} as delivery {}, but {why}",
                        l.seq, t.delivery
                    ),
                ));
            }
            self.jobs.jobs.insert(
                key,
                Job {
                    deliveries: t.delivery,
                    lease: Some((l.token, l.deadline.as_micros())),
                    ..job
                },
            );
            let roll = d.range(0, 99) as u8;
            if roll < ok {
                self.archive_job(node, &l, false);
            } else if roll < ok.saturating_add(fail) {
                self.release_job(node, &l, t.delivery);
            } else if d.chance(50) {
                self.jobs.late.entry(node).or_default().push(l);
            }
            if self.failure.is_some() {
                return;
            }
        }
        self.dirty.insert(node);
    }

    /// Archives a job; `late`: its lease may have lapsed, and another
    /// worker may have finished it first.
    fn archive_job(&mut self, node: usize, l: &Lease, late: bool) {
        let now = self.clock(node);
        let from = self.peer_index(&l.from);
        let r = match self.slots[node].node.as_mut() {
            Some(x) => x.archive(l.from, l.seq, now),
            None => return,
        };
        match self.node_result(node, "archive", r) {
            Some(true) => {
                self.oracle.on_archived(node, from, l.seq);
                self.jobs.jobs.remove(&(node, from, l.seq));
            }
            Some(false) if late || self.oracle.is_archived(node, from, l.seq) => {}
            Some(false) => self.fail(Failure::new(
                "archived-redelivered",
                format!(
                    "n{node} handed out message {} from n{from}, but archive says it was archived",
                    l.seq
                ),
            )),
            None => {}
        }
    }

    fn release_job(&mut self, node: usize, l: &Lease, delivery: u32) {
        let policy = policy();
        let ts = self.wall(node);
        let from = self.peer_index(&l.from);
        let r = match self.slots[node].node.as_mut() {
            Some(x) => x.release(l, None, &policy, ts),
            None => return,
        };
        let Some(released) = self.node_result(node, "release", r) else {
            return;
        };
        let key = (node, from, l.seq);
        let want = if delivery >= policy.max_deliveries {
            Released::DeadLettered
        } else {
            Released::RetryAt(ts + policy.delay_after(delivery))
        };
        if released != want {
            return self.fail(Failure::new(
                "dead-letter",
                format!("n{node} released message {} from n{from} after delivery {delivery}: {released:?}, expected {want:?}", l.seq),
            ));
        }
        self.note(format_args!(
            "n{node} released {} from n{from}: {released:?}",
            l.seq
        ));
        let job = self.jobs.jobs.entry(key).or_default();
        job.lease = None;
        match released {
            Released::RetryAt(at) => job.retry_at = at.as_micros(),
            Released::DeadLettered => job.dead = true,
        }
    }

    /// `Event::DeadLettered` from a take: only after exactly the maximum
    /// deliveries, the last lease lapsed.
    pub(super) fn on_dead_lettered(
        &mut self,
        node: usize,
        from: usize,
        seq: u64,
        reason: DeadReason,
        deliveries: u32,
    ) -> Result<(), Failure> {
        let max = policy().max_deliveries;
        let now = self.wall(node).as_micros();
        let job = self.jobs.jobs.entry((node, from, seq)).or_default();
        let lapsed = job.lease.is_none_or(|(_, d)| d <= now);
        if reason != DeadReason::MaxDeliveries
            || deliveries != max
            || job.deliveries != max
            || !lapsed
        {
            return Err(Failure::new(
                "dead-letter",
                format!("n{node} dead-lettered message {seq} from n{from} ({reason}) after {deliveries} deliveries; the oracle counted {} of at most {max}, lease {:?}", job.deliveries, job.lease),
            ));
        }
        job.dead = true;
        Ok(())
    }
}
