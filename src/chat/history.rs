//! Reading: the caller's conversations, a conversation's history (paging back and catching up),
//! unread counts and who is online.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Chat, ChatError, message_view};
use crate::{
    db::{self, chat::Cursor, entities::user},
    events::{MessageView, rfc3339},
};

/// The largest history page.
pub const MAX_PAGE: u64 = 200;

/// A conversation as the caller's list shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": 31, "other_user": {"id": 7, "username": "alice", "name": "Alice", "online": true, "last_seen_at": "2026-12-04T18:02:00.000Z"}, "last_message": "See you at six?", "last_message_id": 812, "last_message_at": "2026-12-04T18:02:11.204Z", "last_message_by": 7, "unread_count": 1, "created_at": "2026-11-30T09:00:00.000Z"}))]
pub struct ConversationView {
    pub id: i64,
    /// The other participant.
    pub other_user: ContactView,
    /// The first characters of the last message (empty for an attachment without text).
    pub last_message: String,
    pub last_message_id: Option<i64>,
    pub last_message_at: Option<String>,
    pub last_message_by: Option<i64>,
    /// Messages the caller has not read yet.
    pub unread_count: i64,
    pub created_at: String,
}

/// Another user with presence.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContactView {
    pub id: i64,
    pub username: String,
    /// Display name (seed field name: `sender_name` in messages).
    pub name: String,
    /// Polled within the online window and did not disconnect.
    pub online: bool,
    pub last_seen_at: Option<String>,
}

impl ContactView {
    pub fn new(u: &user::Model, now: DateTime<Utc>) -> Self {
        ContactView {
            id: u.id,
            username: u.username.clone(),
            name: u.display_name.clone(),
            online: is_online(u, now),
            last_seen_at: u.last_seen_at.map(rfc3339),
        }
    }
}

/// Online means: polled within the online window (shared through the database by every instance) and
/// not disconnected since.
pub fn is_online(u: &user::Model, now: DateTime<Utc>) -> bool {
    u.online_until.is_some_and(|t| t > now)
}

/// One page of the caller's conversation with another user.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"messages": [{"id": 812, "conversation_id": 31, "sender_id": 7, "sender_name": "Alice", "receiver_id": 9, "message": "See you at six?", "attachment": null, "attachment_type": null, "timestamp": "2026-12-04T18:02:11.204Z", "is_read": false, "delivered_at": null, "read_at": null}], "has_more": true, "conversation_id": 31, "next_before": 812, "next_since": 812, "last_updated": "2026-12-04T18:02:11.204Z"}))]
pub struct HistoryPage {
    /// Chronological order (oldest first) within the page.
    pub messages: Vec<MessageView>,
    /// More messages lie beyond this page: older ones when paging back (`before` or no cursor), newer
    /// ones when catching up (`since`).
    pub has_more: bool,
    /// The conversation's id, `null` when the two users never exchanged a message.
    pub conversation_id: Option<i64>,
    /// Pass as `before` to get the previous (older) page.
    pub next_before: Option<i64>,
    /// Pass as `since` to catch up from the end of this page.
    pub next_since: Option<i64>,
    /// Server time of this answer.
    pub last_updated: String,
}

/// Unread counts of the caller.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"unread_count": 3, "conversations": [{"conversation_id": 31, "user_id": 7, "unread_count": 3}]}))]
pub struct UnreadCounts {
    /// All unread messages.
    pub unread_count: i64,
    /// Per conversation with unread messages.
    pub conversations: Vec<ConversationUnread>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationUnread {
    pub conversation_id: i64,
    /// The other participant.
    pub user_id: i64,
    pub unread_count: i64,
}

/// Users online now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"count": 1, "users": [{"id": 7, "username": "alice", "name": "Alice", "online": true, "last_seen_at": "2026-12-04T18:02:00.000Z"}], "online_user_ids": [7]}))]
pub struct OnlineUsers {
    pub count: usize,
    pub users: Vec<ContactView>,
    /// Their ids, for quick lookups.
    pub online_user_ids: Vec<i64>,
}

impl Chat {
    /// The caller's conversations, most recent activity first.
    pub async fn conversations(
        &self,
        caller: &user::Model,
    ) -> Result<Vec<ConversationView>, ChatError> {
        let now = Utc::now();
        let rows = db::chat::list_conversations(&self.db, caller.id, 1000).await?;
        Ok(rows
            .into_iter()
            .map(|(c, other)| ConversationView {
                id: c.id,
                other_user: ContactView::new(&other, now),
                unread_count: db::chat::unread_for(&c, caller.id),
                last_message: c.last_message_preview,
                last_message_id: c.last_message_id,
                last_message_at: c.last_message_at.map(rfc3339),
                last_message_by: c.last_message_by,
                created_at: rfc3339(c.created_at),
            })
            .collect())
    }
    /// A history page between the caller and `other_id`.
    pub async fn history(
        &self,
        caller: &user::Model,
        other_id: i64,
        cursor: Cursor,
        limit: u64,
    ) -> Result<HistoryPage, ChatError> {
        let other = db::users::find(&self.db, other_id)
            .await?
            .ok_or(ChatError::NoSuchUser(other_id))?;
        let now = Utc::now();
        let Some(conv) = db::chat::find_conversation(&self.db, caller.id, other_id).await? else {
            return Ok(HistoryPage {
                messages: Vec::new(),
                has_more: false,
                conversation_id: None,
                next_before: None,
                next_since: None,
                last_updated: rfc3339(now),
            });
        };
        let (rows, has_more) = db::chat::history(&self.db, conv.id, cursor, limit).await?;
        let me = caller;
        let messages: Vec<MessageView> = rows
            .iter()
            .map(|m| message_view(m, if m.sender_id == me.id { me } else { &other }))
            .collect();
        Ok(HistoryPage {
            next_before: messages.first().map(|m| m.id),
            next_since: messages.last().map(|m| m.id).or(match cursor {
                Cursor::SinceId(id) => Some(id),
                _ => None,
            }),
            messages,
            has_more,
            conversation_id: Some(conv.id),
            last_updated: rfc3339(now),
        })
    }
    pub async fn unread_counts(&self, caller: &user::Model) -> Result<UnreadCounts, ChatError> {
        let me = caller.id;
        let rows = db::chat::list_conversations(&self.db, me, 10_000).await?;
        let conversations: Vec<ConversationUnread> = rows
            .iter()
            .map(|(c, _)| ConversationUnread {
                conversation_id: c.id,
                user_id: db::chat::other_party(c, me),
                unread_count: db::chat::unread_for(c, me),
            })
            .filter(|c| c.unread_count > 0)
            .collect();
        Ok(UnreadCounts {
            unread_count: conversations.iter().map(|c| c.unread_count).sum(),
            conversations,
        })
    }
    pub async fn online_users(&self, caller: &user::Model) -> Result<OnlineUsers, ChatError> {
        let now = Utc::now();
        let users: Vec<ContactView> = db::users::online(&self.db, now, 500)
            .await?
            .iter()
            .filter(|u| u.id != caller.id)
            .map(|u| ContactView::new(u, now))
            .collect();
        Ok(OnlineUsers {
            count: users.len(),
            online_user_ids: users.iter().map(|u| u.id).collect(),
            users,
        })
    }
}
