//! Mailboxes from the application: naming the peers that hold our mail
//! while we are away, routes to other recipients' mailboxes, and what a
//! mailbox node holds (see `peermq`'s node `mailbox` module).

use std::collections::BTreeSet;

use peermq::{CarriedStatus, HeldInMailbox, PeerId, Store};

use super::service::QueueCommand;
use super::Mq;
use crate::driver::{answer, Ctx, Reply};
use crate::error::MqError;

/// What an [`Mq`] asks of the queue about mailboxes.
pub(crate) enum MailCommand {
    AddMailbox {
        mailbox: PeerId,
        reply: Reply<()>,
    },
    RemoveMailbox {
        mailbox: PeerId,
        reply: Reply<bool>,
    },
    AddRoute {
        recipient: PeerId,
        mailbox: PeerId,
        reply: Reply<()>,
    },
    RemoveRoute {
        recipient: PeerId,
        mailbox: PeerId,
        reply: Reply<bool>,
    },
    Status {
        reply: Reply<MailStatus>,
    },
}

/// Where mail goes and what waits, for `status` ([`Mq::mail_status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailStatus {
    /// The mailboxes we named ([`Mq::add_mailbox`]).
    pub mailboxes: BTreeSet<PeerId>,
    /// Per recipient we sent to, the mailboxes its mail may go through
    /// (from its signed list, or set with [`Mq::add_route`]).
    pub routes: Vec<(PeerId, BTreeSet<PeerId>)>,
    /// As an author: what each of our recipients' mailboxes said it
    /// stores of our mail, and how much of that still waits.
    pub held: Vec<HeldInMailbox>,
    /// As a mailbox: the feeds held for their recipients.
    pub carried: Vec<CarriedStatus>,
}

impl Mq {
    /// Names `mailbox` as a peer that holds our mail while we are away:
    /// senders that cannot reach us push it there, and we collect it when
    /// we connect. The node stays connected to it from now on (and from
    /// each start); the signed list of our mailboxes reaches it, and our
    /// senders, as we connect to them.
    pub async fn add_mailbox(&self, mailbox: PeerId) -> Result<(), MqError> {
        self.queue(|reply| QueueCommand::Mail(MailCommand::AddMailbox { mailbox, reply }))
            .await
    }

    /// Stops naming `mailbox`; returns whether it was named. It refuses our
    /// mail once our new list reaches it.
    pub async fn remove_mailbox(&self, mailbox: PeerId) -> Result<bool, MqError> {
        self.queue(|reply| QueueCommand::Mail(MailCommand::RemoveMailbox { mailbox, reply }))
            .await
    }

    /// Sets that `recipient`'s mail may go through `mailbox`, for a
    /// recipient we have not met (one we have met told us its own
    /// mailboxes). The node stays connected to `mailbox` from each start.
    pub async fn add_route(&self, recipient: PeerId, mailbox: PeerId) -> Result<(), MqError> {
        self.queue(|reply| {
            QueueCommand::Mail(MailCommand::AddRoute {
                recipient,
                mailbox,
                reply,
            })
        })
        .await
    }

    /// Forgets a route set with [`Mq::add_route`]; returns whether it was
    /// set.
    pub async fn remove_route(&self, recipient: PeerId, mailbox: PeerId) -> Result<bool, MqError> {
        self.queue(|reply| {
            QueueCommand::Mail(MailCommand::RemoveRoute {
                recipient,
                mailbox,
                reply,
            })
        })
        .await
    }

    /// Our mailboxes, the routes to our recipients' mailboxes, what waits
    /// for our recipients in their mailboxes, and, as a mailbox, what we
    /// hold.
    pub async fn mail_status(&self) -> Result<MailStatus, MqError> {
        self.queue(|reply| QueueCommand::Mail(MailCommand::Status { reply }))
            .await
    }
}

/// Answers one mail command.
pub(crate) fn on_mail<S: Store>(cx: &mut Ctx<'_, S>, cmd: MailCommand) {
    let now = cx.now;
    match cmd {
        MailCommand::AddMailbox { mailbox, reply } => {
            answer(reply, cx.node.add_mailbox(mailbox, now).map_err(Into::into));
        }
        MailCommand::RemoveMailbox { mailbox, reply } => {
            let r = cx.node.remove_mailbox(&mailbox, now);
            answer(reply, r.map_err(Into::into));
        }
        MailCommand::AddRoute {
            recipient,
            mailbox,
            reply,
        } => {
            let r = cx.node.add_route(recipient, mailbox);
            if r.is_ok() {
                // Mail already waiting for the recipient goes now.
                cx.node.dial(mailbox, now);
            }
            answer(reply, r.map_err(Into::into));
        }
        MailCommand::RemoveRoute {
            recipient,
            mailbox,
            reply,
        } => {
            let r = cx.node.remove_route(&recipient, &mailbox);
            answer(reply, r.map_err(Into::into));
        }
        MailCommand::Status { reply } => {
            let node = &*cx.node;
            let status = || -> Result<MailStatus, peermq::NodeError> {
                let routes = node
                    .status()?
                    .iter()
                    .map(|p| (p.peer, node.mailboxes_of(&p.peer)))
                    .filter(|(_, m)| !m.is_empty())
                    .collect();
                Ok(MailStatus {
                    mailboxes: node.mailboxes(),
                    routes,
                    held: node.held_in_mailboxes()?,
                    carried: node.carried(),
                })
            };
            answer(reply, status().map_err(Into::into));
        }
    }
}
