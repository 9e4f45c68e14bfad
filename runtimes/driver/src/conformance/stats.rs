//! A service beside the queue, to show the seam: it counts the messages
//! that arrive from each peer. Everything it takes is this file and one
//! call that registers it when a node starts ([`open`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use peermq::{Event, MemStore, PeerId, Store};

use crate::driver::{answer, Command, CommandTx, Ctx, Reply, Service};
use crate::error::MqError;
use crate::mq::{Builder, Mq, Queue, QueueCommand};
use crate::Runtime;

/// The queue's commands and the counter's own.
pub(crate) enum StatsCommand {
    Queue(QueueCommand),
    /// The messages that arrived from each peer since the node started.
    Counts {
        reply: Reply<BTreeMap<PeerId, u64>>,
    },
}

impl From<QueueCommand> for StatsCommand {
    fn from(c: QueueCommand) -> Self {
        StatsCommand::Queue(c)
    }
}

/// Counts arrivals per peer, and leaves everything else to the queue.
pub(crate) struct Stats {
    queue: Queue,
    counts: BTreeMap<PeerId, u64>,
}

impl<S: Store> Service<S> for Stats {
    type Command = StatsCommand;

    fn on_command(&mut self, cx: &mut Ctx<'_, S>, cmd: StatsCommand) {
        match cmd {
            StatsCommand::Queue(c) => self.queue.on_command(cx, c),
            StatsCommand::Counts { reply } => answer(reply, Ok(self.counts.clone())),
        }
    }

    fn on_event(&mut self, cx: &mut Ctx<'_, S>, event: &Event) {
        if let Event::Message { from, .. } = event {
            *self.counts.entry(*from).or_default() += 1;
        }
        self.queue.on_event(cx, event);
    }

    fn after_pump(&mut self, cx: &mut Ctx<'_, S>) {
        self.queue.after_pump(cx);
    }
}

/// A node's queue handle, and a way to ask its counter.
pub(crate) struct Counted {
    pub mq: Mq,
    cmd: CommandTx<MemStore, Stats>,
}

impl Counted {
    /// The messages that arrived from each peer.
    pub async fn counts(&self) -> Result<BTreeMap<PeerId, u64>, MqError> {
        let (reply, rx) = async_channel::bounded(1);
        let cmd = Command::Service(StatsCommand::Counts { reply });
        self.cmd.send(cmd).await.map_err(|_| MqError::Closed)?;
        rx.recv().await.map_err(|_| MqError::Closed)?
    }
}

/// Starts a node in memory with the counter registered beside its queue.
pub(crate) fn open(builder: Builder, rt: Arc<dyn Runtime>) -> Result<Counted, MqError> {
    let (mq, cmd) = builder.launch(MemStore::new(), rt, |_, queue| {
        Ok::<_, MqError>(Stats {
            queue,
            counts: BTreeMap::new(),
        })
    })?;
    Ok(Counted { mq, cmd })
}
