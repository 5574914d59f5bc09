//! Read receipts: marking messages read, and the `read_receipt` event to their sender.

use chrono::Utc;
use serde::Serialize;

use super::{Chat, ChatError};
use crate::{
    db::{
        self,
        chat::ReadSelection,
        entities::{conversation, user},
    },
    events::{Audience, Envelope, data::ReadReceipt, rfc3339},
};

/// What `mark-read` identifies.
#[derive(Debug, Clone, Default)]
pub struct MarkRead {
    pub conversation_id: Option<i64>,
    pub user_id: Option<i64>,
    pub message_ids: Option<Vec<i64>>,
    pub up_to: Option<i64>,
}

/// The answer of `mark-read`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ok", "conversation_id": 31, "marked": 2, "message_ids": [811, 812], "read_at": "2026-12-04T18:03:00.000Z", "unread_count": 0}))]
pub struct MarkReadResult {
    /// Always `ok`.
    pub status: String,
    pub conversation_id: i64,
    /// Number of messages marked read now.
    pub marked: usize,
    pub message_ids: Vec<i64>,
    pub read_at: Option<String>,
    /// The caller's unread count in the conversation afterwards.
    pub unread_count: i64,
}

impl Chat {
    /// Marks messages the caller received read and sends a `read_receipt` event to the sender (and to the
    /// caller's registered clients, so the caller's other devices clear their badges).
    pub async fn mark_read(
        &self,
        caller: &user::Model,
        req: MarkRead,
    ) -> Result<MarkReadResult, ChatError> {
        let me = caller;
        let conv = self.resolve_conversation(me.id, &req).await?;
        let other_id = db::chat::other_party(&conv, me.id);
        let read_at = Utc::now();
        let selection = ReadSelection {
            message_ids: req.message_ids.clone(),
            up_to: req.up_to,
        };
        let (marked, pending) =
            db::chat::mark_read(&self.db, me.id, &conv, selection, read_at, |marked| {
                let ids: Vec<i64> = marked.iter().map(|m| m.id).collect();
                let event = Envelope::of(&ReadReceipt {
                    conversation_id: conv.id,
                    message_id: ids.last().copied(),
                    message_ids: ids,
                    reader_id: me.id,
                    reader_name: me.display_name.clone(),
                    read_at: rfc3339(read_at),
                });
                (
                    vec![Audience::Users(vec![other_id]), Audience::Devices(me.id)],
                    event,
                )
            })
            .await?;
        self.outbox.publish_committed(&pending).await;
        let unread = db::chat::find_conversation_by_id(&self.db, conv.id)
            .await?
            .map(|c| db::chat::unread_for(&c, me.id))
            .unwrap_or_default();
        Ok(MarkReadResult {
            status: "ok".into(),
            conversation_id: conv.id,
            marked: marked.len(),
            read_at: (!marked.is_empty()).then(|| rfc3339(read_at)),
            message_ids: marked.iter().map(|m| m.id).collect(),
            unread_count: unread,
        })
    }

    /// Finds the conversation a `mark-read` names, checking the caller takes part in it. Another user's
    /// conversation is answered as not found, so its existence does not leak.
    async fn resolve_conversation(
        &self,
        me: i64,
        req: &MarkRead,
    ) -> Result<conversation::Model, ChatError> {
        let conv = if let Some(id) = req.conversation_id {
            db::chat::find_conversation_by_id(&self.db, id).await?
        } else if let Some(other) = req.user_id {
            db::chat::find_conversation(&self.db, me, other).await?
        } else if let Some(first) = req.message_ids.as_ref().and_then(|ids| ids.first()) {
            match db::chat::find_message(&self.db, *first).await? {
                Some(m) => db::chat::find_conversation_by_id(&self.db, m.conversation_id).await?,
                None => None,
            }
        } else {
            return Err(ChatError::NoConversationGiven);
        };
        conv.filter(|c| c.user1_id == me || c.user2_id == me)
            .ok_or(ChatError::NoSuchConversation)
    }
}

#[cfg(test)]
mod tests {
    use super::MarkRead;
    use crate::{
        app::testing::{Parts, next_events},
        chat::ChatError,
        delivery::Ack,
    };

    #[tokio::test]
    async fn reading_marks_the_messages_and_tells_the_sender() {
        let parts = Parts::start().await;
        let (chat, delivery) = (parts.chat(), parts.delivery());
        let alice = parts.user("alice").await;
        let bob = parts.user("bob").await;
        let sent = chat
            .send(&alice.user, bob.user.id, "read me".into(), None)
            .await
            .unwrap();
        let mut alices = delivery.open(&alice, None, Ack::OnHandOver).await.unwrap();
        // What alice's postbox held before the receipt (her own copy of the message, if any).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        alices.next(deadline).await.unwrap().handed_over().await;

        let by_user = MarkRead {
            conversation_id: None,
            user_id: Some(alice.user.id),
            message_ids: None,
            up_to: None,
        };
        let result = chat.mark_read(&bob.user, by_user).await.unwrap();
        assert_eq!(result.marked, 1);
        assert_eq!(result.message_ids, [sent.id]);

        let events = next_events(&mut alices, true).await;
        let receipt = events
            .iter()
            .find(|e| e.kind == "read_receipt")
            .unwrap_or_else(|| panic!("no read_receipt in {events:?}"));
        assert_eq!(receipt.data["reader_id"], bob.user.id);

        // Nothing is left to mark, and a third user cannot touch the conversation.
        let again = MarkRead {
            conversation_id: Some(result.conversation_id),
            user_id: None,
            message_ids: None,
            up_to: None,
        };
        assert_eq!(chat.mark_read(&bob.user, again).await.unwrap().marked, 0);
        let stranger = parts.user("carol").await;
        let foreign = MarkRead {
            conversation_id: Some(result.conversation_id),
            user_id: None,
            message_ids: None,
            up_to: None,
        };
        let refused = chat.mark_read(&stranger.user, foreign).await;
        assert!(
            matches!(refused, Err(ChatError::NoSuchConversation)),
            "{refused:?}"
        );
    }
}
