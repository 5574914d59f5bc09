//! Sending: every check before anything is stored (text, attachment size, type and quota, receiver,
//! rates, the receiver's undelivered messages, the broker), then the attachment's file, then the
//! message with its event (group commit), then the publish.

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use super::{
    Chat, ChatError,
    attachments::{self, Download, FileType, Upload},
    message_view,
};
use crate::{
    db::{
        self, DbError,
        batch::Batcher,
        chat::{ConversationIds, NewAttachment, NewMessage, StoredMessage},
        entities::user,
    },
    delivery::outbox::Outbox,
    events::{Audience, Envelope, MessageView},
    limits::RateLimited,
    validate,
};

impl Chat {
    /// Sends a message from the caller to `receiver_id`, with an optional attachment still in memory:
    /// validates everything (text, attachment size and type, receiver, rate, quota, broker), then stores
    /// the attachment's file, then the message and its events in one transaction, then publishes the
    /// events to the receiver's postboxes and to the sender's registered clients (so the sender's other
    /// devices see it too; not to the sender's default postbox, whose seed-style clients would show it as
    /// a message from someone else).
    ///
    /// The answer is the stored message. A refused send writes nothing, and a send whose message cannot
    /// be stored removes its file again. (A file can still outlive its send when the request goes away
    /// between the two writes, or the process dies: the sweep, [`attachments::sweep`], removes it.) While
    /// RabbitMQ is known to be unreachable the send is refused with 503 before anything is stored. If the
    /// publish fails after the commit (the broker died in between), the events stay in the outbox and the
    /// relay delivers them: the message is never lost and never announced without being stored.
    pub async fn send(
        &self,
        sender: &user::Model,
        receiver_id: i64,
        text: String,
        upload: Option<Upload>,
    ) -> Result<MessageView, ChatError> {
        let text =
            validate::message_text(&text, self.limits.max_message_chars, Some(upload.is_some()))?;
        let upload = upload.map(|u| self.checked_upload(u)).transpose()?;
        if receiver_id == sender.id {
            return Err(ChatError::ToSelf);
        }
        if !self.accounts.user_exists(receiver_id).await? {
            return Err(ChatError::NoSuchUser(receiver_id));
        }
        self.send_limit.check(sender.id, "messages")?;
        self.check_undelivered(sender.id, receiver_id).await?;
        if let Some((upload, _)) = &upload {
            self.check_quota(sender.id, upload.bytes.len()).await?;
        }
        // While RabbitMQ is known to be down, refuse (503) rather than store a message nobody is told of.
        self.broker.ensure_available().await?;
        let attachment = match upload {
            Some((upload, file_type)) => {
                let size = upload.bytes.len() as i64;
                let key = self
                    .attachments
                    .put(upload.bytes, file_type)
                    .await
                    .map_err(ChatError::Storage)?;
                Some(NewAttachment {
                    key,
                    kind: file_type.kind.to_owned(),
                    size,
                })
            }
            None => None,
        };
        let key = attachment.as_ref().map(|a| a.key.clone());
        let author = sender.clone();
        let stored = self
            .messages
            .store(NewMessage {
                sender_id: sender.id,
                receiver_id,
                text,
                attachment,
                event_for: Box::new(move |msg| {
                    (
                        vec![
                            Audience::Users(vec![msg.receiver_id]),
                            Audience::Devices(msg.sender_id),
                        ],
                        Envelope::of(&message_view(msg, &author)),
                    )
                }),
            })
            .await;
        let (msg, pending) = match stored {
            Ok(stored) => stored,
            Err(e) => {
                if let Some(key) = key
                    && let Err(remove) = self.attachments.remove(&key).await
                {
                    tracing::warn!(error = %remove, "cannot remove the attachment of a send that failed; the sweep will");
                }
                return Err(e.into());
            }
        };
        self.outbox.publish_committed(&pending).await;
        Ok(message_view(&msg, sender))
    }

    /// Refuses (429) a message when its sender already has `max_undelivered` messages waiting for this
    /// receiver that none of the receiver's clients was handed yet: they sit in the receiver's postbox,
    /// and more would push out what else it holds (the postbox keeps its newest 100 events). Messages
    /// older than the message TTL have left the postbox and no longer count.
    async fn check_undelivered(&self, sender_id: i64, receiver_id: i64) -> Result<(), ChatError> {
        let cap = self.limits.max_undelivered;
        let ttl =
            chrono::Duration::from_std(self.limits.message_ttl).unwrap_or(chrono::Duration::MAX);
        let since = Utc::now()
            .checked_sub_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        if db::chat::undelivered_at_least(&self.db, sender_id, receiver_id, since, u64::from(cap))
            .await?
        {
            return Err(RateLimited {
                detail: format!(
                    "user {receiver_id} has not received your last {cap} messages yet; send more once they are delivered (POSTBOX_MAX_UNDELIVERED)"
                ),
                retry_after_secs: 10,
            }
            .into());
        }
        Ok(())
    }

    /// An upload's type, judged by its content (415 for types not accepted), after its size (413).
    fn checked_upload(&self, upload: Upload) -> Result<(Upload, FileType), ChatError> {
        let max = self.limits.max_attachment_bytes;
        if upload.bytes.len() > max {
            return Err(ChatError::TooLarge(format!(
                "the attachment is larger than {max} bytes"
            )));
        }
        let file_type =
            attachments::detect(&upload.bytes).ok_or(ChatError::UnsupportedAttachment)?;
        Ok((upload, file_type))
    }

    /// Refuses (413) an attachment of `size` bytes that would take the sender beyond their attachment
    /// quota. Two sends of one user racing past the check may both be stored: the quota can be overrun by
    /// the uploads in flight at that moment (at most `POSTBOX_MAX_UPLOADS` per instance).
    async fn check_quota(&self, sender_id: i64, size: usize) -> Result<(), ChatError> {
        let quota = self.limits.attachment_quota_bytes;
        if quota == 0 {
            return Ok(());
        }
        let used = db::chat::attachment_bytes(&self.db, sender_id).await?;
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(size as u64) > quota {
            return Err(ChatError::TooLarge(format!(
                "attachment quota of {quota} bytes exceeded: you have stored {used} bytes of attachments, and this one has {size}"
            )));
        }
        Ok(())
    }

    /// An attachment the caller may read (they sent or received its message): its type and its bytes.
    /// Anyone else's, or a message without one, is not found (its existence is not confirmed either).
    pub async fn open_attachment(
        &self,
        caller: &user::Model,
        message_id: i64,
    ) -> Result<(FileType, Download), ChatError> {
        let msg = db::chat::find_message(&self.db, message_id)
            .await?
            .filter(|m| m.sender_id == caller.id || m.receiver_id == caller.id)
            .ok_or(ChatError::NoSuchAttachment)?;
        let key = msg.attachment.ok_or(ChatError::NoSuchAttachment)?;
        let file_type = attachments::type_of_key(&key).ok_or(ChatError::NoSuchAttachment)?;
        let download = self
            .attachments
            .open(&key)
            .await
            .map_err(ChatError::Storage)?
            .ok_or(ChatError::NoSuchAttachment)?;
        Ok((file_type, download))
    }
}

/// Stores chat messages with group commit: the messages of every send waiting while one transaction
/// commits are written together in the next one (SQLite has one writer anyway; a transaction's begin
/// and commit, and on PostgreSQL its WAL flush, are then paid once per group instead of once per
/// message). A group that fails is retried one message at a time, so one bad message fails only its
/// own send (unless the database is unavailable: then all fail at once, with 503). Cheap to clone.
#[derive(Clone)]
pub struct Messages {
    writes: Batcher<(NewMessage, StoredReply)>,
}

/// Where the writer tells a send how its message was stored.
type StoredReply = tokio::sync::oneshot::Sender<Result<StoredMessage, DbError>>;

impl Messages {
    /// Starts the writer; needs a Tokio runtime. `outbox` publishes the events of a message whose
    /// request went away while it was being stored.
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        let conversations = ConversationIds::default();
        let writes = Batcher::spawn(std::time::Duration::ZERO, move |group: Vec<_>| {
            let (db, conversations, outbox) = (db.clone(), conversations.clone(), outbox.clone());
            async move {
                let (messages, replies): (Vec<NewMessage>, Vec<StoredReply>) =
                    group.into_iter().unzip();
                let results: Vec<Result<StoredMessage, DbError>> = match db::chat::store_messages(
                    &db,
                    &conversations,
                    &messages,
                )
                .await
                {
                    Ok(stored) => stored.into_iter().map(Ok).collect(),
                    Err(e) if messages.len() == 1 => vec![Err(e)],
                    // The database is unreachable or busy: one by one would only wait as many
                    // times as long for the same answer.
                    Err(e @ DbError::Unavailable(_)) => {
                        messages.iter().map(|_| Err(e.shared())).collect()
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, messages = messages.len(), "group commit failed; storing its messages one by one");
                        let mut results = Vec::with_capacity(messages.len());
                        for m in &messages {
                            let one = std::slice::from_ref(m);
                            results.push(
                                db::chat::store_messages(&db, &conversations, one)
                                    .await
                                    .map(|mut stored| stored.remove(0)),
                            );
                        }
                        results
                    }
                };
                for (reply, result) in replies.into_iter().zip(results) {
                    if let Err(Ok((_, pending))) = reply.send(result) {
                        // The request is gone but its message is stored: announce it now rather
                        // than leave it to the relay.
                        let outbox = outbox.clone();
                        tokio::spawn(async move { outbox.publish_committed(&pending).await });
                    }
                }
            }
        });
        Messages { writes }
    }

    /// Stores a message and its event (see [`db::chat::store_messages`]); the events are to be
    /// published by the caller.
    pub async fn store(&self, message: NewMessage) -> Result<StoredMessage, DbError> {
        self.writes.ask(|reply| (message, reply)).await?
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        app::testing::{Parts, next_events},
        chat::ChatError,
        delivery::Ack,
    };

    #[tokio::test]
    async fn a_sent_message_is_stored_and_reaches_the_receivers_postbox() {
        let parts = Parts::start().await;
        let (chat, delivery) = (parts.chat(), parts.delivery());
        let alice = parts.user("alice").await;
        let bob = parts.user("bob").await;
        let mut session = delivery.open(&bob, None, Ack::OnHandOver).await.unwrap();

        let sent = chat
            .send(&alice.user, bob.user.id, "hello bob".into(), None)
            .await
            .unwrap();
        assert_eq!(
            (sent.sender_id, sent.receiver_id),
            (alice.user.id, bob.user.id)
        );

        let events = next_events(&mut session, true).await;
        let message = events
            .iter()
            .find(|e| e.kind == "message")
            .unwrap_or_else(|| panic!("no message event in {events:?}"));
        assert_eq!(message.data["id"], sent.id);
        assert_eq!(message.data["message"], "hello bob");
        assert_eq!(message.data["sender_id"], alice.user.id);

        let page = chat
            .history(
                &bob.user,
                alice.user.id,
                crate::db::chat::Cursor::Latest,
                50,
            )
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1, "stored once");
        assert_eq!(page.messages[0].message, "hello bob");
    }

    #[tokio::test]
    async fn a_refused_send_stores_and_announces_nothing() {
        let parts = Parts::start().await;
        let (chat, delivery) = (parts.chat(), parts.delivery());
        let alice = parts.user("alice").await;
        let bob = parts.user("bob").await;
        let to_self = chat
            .send(&alice.user, alice.user.id, "me".into(), None)
            .await;
        assert!(matches!(to_self, Err(ChatError::ToSelf)), "{to_self:?}");
        let nobody = chat.send(&alice.user, 999_999, "hi".into(), None).await;
        assert!(
            matches!(nobody, Err(ChatError::NoSuchUser(999_999))),
            "{nobody:?}"
        );
        let nul = chat
            .send(&alice.user, bob.user.id, "a\0b".into(), None)
            .await;
        assert!(matches!(nul, Err(ChatError::Invalid(_))), "{nul:?}");
        let blank = chat.send(&alice.user, bob.user.id, "  ".into(), None).await;
        assert!(matches!(blank, Err(ChatError::Invalid(_))), "{blank:?}");

        let conversations = chat.conversations(&bob.user).await.unwrap();
        assert!(conversations.is_empty(), "{conversations:?}");
        let mut session = delivery.open(&bob, None, Ack::OnHandOver).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        let batch = session.next(deadline).await.unwrap();
        assert!(batch.is_empty(), "bob's postbox holds nothing");
    }
}
