//! Working through received messages from the application: categories,
//! and [`Worker`]s that take messages with leases.

use std::time::Duration;

use peermq::{
    Category, CategoryCount, DeadReason, Lease, Mailbox, PeerId, Released, RetryPolicy, Taken,
    Timestamp,
};

use super::service::WorkCommand;
use super::{Mq, QueueCommand};
use crate::driver::Reply;
use crate::error::MqError;

/// Takes received messages with leases, as a worker of a job queue does:
/// at-least-once delivery (a message whose lease lapses, because its
/// worker died or stalled, is handed out again), exactly-once archive.
///
/// Made by [`Mq::worker`], with the worker's [`RetryPolicy`] and lease
/// time. Workers in this process and in others on the same data
/// directory never hold one message at once.
#[derive(Clone, Debug)]
pub struct Worker {
    mq: Mq,
    policy: RetryPolicy,
    lease_for: Duration,
}

impl Worker {
    /// Takes up to `max` unread messages, each leased for the worker's
    /// lease time, in one commit. Empty when nothing can be taken now (all
    /// taken, waiting out a retry delay, or not arrived).
    pub async fn take(&self, max: usize) -> Result<Vec<Taken>, MqError> {
        self.work(|reply| WorkCommand::Take {
            max,
            lease_for: self.lease_for,
            policy: self.policy.clone(),
            reply,
        })
        .await
    }

    /// Extends `lease` by the worker's lease time from now, for a job
    /// that needs longer. Returns the new deadline; fails with
    /// `LeaseLost` if the lease is no longer held.
    pub async fn extend(&self, lease: &Lease) -> Result<Timestamp, MqError> {
        let lease = *lease;
        self.work(|reply| WorkCommand::Extend {
            lease,
            lease_for: self.lease_for,
            reply,
        })
        .await
    }

    /// Gives `lease`'s message back unprocessed: handed out again after
    /// `delay`, or the policy's backoff when `None`; dead-lettered if it
    /// had the policy's maximum deliveries.
    pub async fn release(
        &self,
        lease: &Lease,
        delay: Option<Duration>,
    ) -> Result<Released, MqError> {
        let lease = *lease;
        self.work(|reply| WorkCommand::Release {
            lease,
            delay,
            policy: self.policy.clone(),
            reply,
        })
        .await
    }

    /// Archives `lease`'s message: done. Returns `false` if it already was
    /// archived (a lapsed lease whose message another worker finished
    /// first), so each message's work is committed once.
    pub async fn archive(&self, lease: &Lease) -> Result<bool, MqError> {
        self.mq.archive(lease.from, lease.seq).await
    }

    /// Archives the messages of `leases`, done, with one commit per sender
    /// (usually one). Returns, for each, whether it was newly archived.
    pub async fn archive_all(&self, leases: &[Lease]) -> Result<Vec<bool>, MqError> {
        let mut fresh = vec![false; leases.len()];
        let mut senders: Vec<PeerId> = leases.iter().map(|l| l.from).collect();
        senders.sort();
        senders.dedup();
        for from in senders {
            let (idx, seqs): (Vec<usize>, Vec<u64>) = leases
                .iter()
                .enumerate()
                .filter(|(_, l)| l.from == from)
                .map(|(i, l)| (i, l.seq))
                .unzip();
            for (i, new) in idx.into_iter().zip(self.mq.archive_many(from, seqs).await?) {
                fresh[i] = new;
            }
        }
        Ok(fresh)
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// How long each lease lasts.
    pub fn lease_time(&self) -> Duration {
        self.lease_for
    }

    async fn work<T>(&self, make: impl FnOnce(Reply<T>) -> WorkCommand) -> Result<T, MqError> {
        self.mq.queue(|reply| QueueCommand::Work(make(reply))).await
    }
}

impl Mq {
    /// A worker that takes messages with leases of `lease_for` and
    /// retries them as `policy` says.
    pub fn worker(&self, policy: RetryPolicy, lease_for: Duration) -> Worker {
        Worker {
            mq: self.clone(),
            policy,
            lease_for,
        }
    }

    /// Moves message `seq` from `from` to `to`: a category (which must
    /// exist), archived, or back to unread. Durable when this returns; a
    /// message is in one place at a time, and a lease on it ends. Returns
    /// `false` if it already was there.
    pub async fn move_to(&self, from: PeerId, seq: u64, to: Mailbox) -> Result<bool, MqError> {
        self.queue(|reply| {
            QueueCommand::Work(WorkCommand::Move {
                from,
                seq,
                to,
                reply,
            })
        })
        .await
    }

    /// Creates `category`; returns whether it is new.
    pub async fn create_category(&self, category: Category) -> Result<bool, MqError> {
        self.queue(|reply| QueueCommand::Work(WorkCommand::CreateCategory { category, reply }))
            .await
    }

    /// Every mailbox and category with how many messages it holds (and,
    /// for unread, how many are taken).
    pub async fn categories(&self) -> Result<Vec<CategoryCount>, MqError> {
        self.queue(|reply| QueueCommand::Work(WorkCommand::Categories { reply }))
            .await
    }

    /// Why message `seq` from `from` was dead-lettered, and after how many
    /// deliveries.
    pub async fn dead_reason(
        &self,
        from: PeerId,
        seq: u64,
    ) -> Result<Option<(DeadReason, u32)>, MqError> {
        self.queue(|reply| QueueCommand::Work(WorkCommand::DeadReason { from, seq, reply }))
            .await
    }
}
