//! Notifications: stored, with per-user read state, and announced through the postboxes.
//!
//! Staff and admins (or a host application through the publish API) address a notification to one
//! user or to a whole college. It is stored, and the `notification` event is committed with it to the
//! outbox: a college notification is **one** publish to `college.<id>`, which RabbitMQ routes into every
//! member's postbox (each postbox is bound to its college's key). Members list their notifications and
//! mark them read, one by one or all at once.

pub mod publish;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::{
    accounts::tokens::{AuthUser, Role},
    broker::{college_routing_key, user_routing_key},
    chat::publish_committed,
    chat::text,
    db::{
        self,
        entities::{notification, user},
        notifications::{Audience, NewNotification},
    },
    error::AppError,
    events::{Event, kind, rfc3339},
    http::docs::MAX_ID,
    state::AppState,
};

/// The longest title.
pub const MAX_TITLE_CHARS: usize = 200;
/// The largest history page.
pub const MAX_PAGE: u64 = 200;

/// A notification as its reader sees it (and, without the read state, as the event carries it).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: i64,
    pub title: String,
    pub message: String,
    /// Free-form category chosen by the sender (`notice` by default).
    pub notification_type: String,
    /// Extra JSON object from the sender, or null.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// Set when addressed to one user.
    pub user_id: Option<i64>,
    /// Set when addressed to a whole college.
    pub college_id: Option<i64>,
    pub created_at: String,
    /// The seeds' event field: the creation time (RFC 3339).
    pub timestamp: String,
    pub is_read: bool,
    pub read_at: Option<String>,
}

impl NotificationView {
    fn new(n: &notification::Model, read_at: Option<DateTime<Utc>>) -> Self {
        Self {
            id: n.id,
            title: n.title.clone(),
            message: n.message.clone(),
            notification_type: n.notification_type.clone(),
            data: n.data.as_deref().and_then(|d| serde_json::from_str(d).ok()),
            user_id: n.user_id,
            college_id: n.college_id,
            created_at: rfc3339(n.created_at),
            timestamp: rfc3339(n.created_at),
            is_read: read_at.is_some(),
            read_at: read_at.map(rfc3339),
        }
    }
}

/// A notification to create.
#[derive(Debug, Clone)]
pub struct Draft {
    pub target: Target,
    pub title: String,
    pub message: String,
    pub notification_type: Option<String>,
    pub data: Option<serde_json::Value>,
}

/// Who a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(i64),
    College(i64),
}

/// What creating a notification did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub notification: NotificationView,
    /// Users addressed: 1, or the college's members.
    pub recipients: u64,
    /// Postboxes the event was routed to (each user's default postbox plus registered clients), as
    /// Postbox records them.
    pub postboxes: u64,
}

/// Creates a notification as a staff member or admin (members get 403).
pub async fn create_as(
    state: &AppState,
    caller: &AuthUser,
    draft: Draft,
) -> Result<Created, AppError> {
    caller.require(Role::Staff)?;
    create(state, draft, Some(caller.0.id)).await
}

/// Validates, stores and announces a notification. `created_by` is `None` for host applications.
pub async fn create(
    state: &AppState,
    draft: Draft,
    created_by: Option<i64>,
) -> Result<Created, AppError> {
    text::check("title", &draft.title)?;
    let title = draft.title.trim().to_owned();
    if text::is_blank(&title) || title.chars().count() > MAX_TITLE_CHARS {
        return Err(AppError::field(
            "title",
            format!("must be 1 to {MAX_TITLE_CHARS} characters, not blank"),
        ));
    }
    text::check("message", &draft.message)?;
    if draft.message.chars().count() > state.config.max_message_chars {
        return Err(AppError::field(
            "message",
            format!(
                "is longer than {} characters",
                state.config.max_message_chars
            ),
        ));
    }
    let notification_type = draft.notification_type.unwrap_or_else(|| "notice".into());
    if !valid_name(&notification_type, 32) {
        return Err(AppError::field(
            "notification_type",
            "must be 1 to 32 characters: lowercase letters, digits, `_`, `-` or `.`, starting with a letter",
        ));
    }
    let data = match draft.data {
        None | Some(serde_json::Value::Null) => None,
        Some(v @ serde_json::Value::Object(_)) => Some(check_size(state, &v)?),
        Some(_) => return Err(AppError::field("data", "must be a JSON object")),
    };
    let (user_id, college_id) = match draft.target {
        Target::User(id) => {
            if !(1..=MAX_ID).contains(&id) || !state.users.exists(&state.db, id).await? {
                return Err(AppError::NotFound(format!("user {id} does not exist")));
            }
            (Some(id), None)
        }
        Target::College(id) => {
            if !(0..=MAX_ID).contains(&id) {
                return Err(AppError::field("college_id", "must be a positive integer"));
            }
            (None, Some(id))
        }
    };
    // While RabbitMQ is known to be down, refuse (503) rather than store what nobody is told of.
    state.broker.ensure_available().await?;
    let (stored, pending) = db::notifications::create(
        &state.db,
        NewNotification {
            user_id,
            college_id,
            title,
            message: draft.message,
            notification_type,
            data,
            created_by,
        },
        |n| {
            let view = NotificationView::new(n, None);
            let event = Event::new(kind::NOTIFICATION, event_data(&view));
            let key = match draft.target {
                Target::User(id) => user_routing_key(id),
                Target::College(id) => college_routing_key(id),
            };
            (vec![key], event.to_bytes())
        },
    )
    .await?;
    match draft.target {
        Target::User(_) => publish_committed(&state.outbox, &pending).await,
        // RabbitMQ confirms a broadcast only once every member's postbox has it on disk (seconds for
        // thousands of members): the outbox row already guarantees it, so the sender is not kept waiting.
        Target::College(_) => {
            let state = state.clone();
            tokio::spawn(async move { publish_committed(&state.outbox, &pending).await });
        }
    }
    let (recipients, postboxes) = match draft.target {
        Target::User(id) => db::notifications::reach(&state.db, Audience::Users(&[id])).await?,
        Target::College(id) => db::notifications::reach(&state.db, Audience::College(id)).await?,
    };
    Ok(Created {
        notification: NotificationView::new(&stored, None),
        recipients,
        postboxes,
    })
}

/// The event's data: the seeds' fields (`title`, `message`, `notification_type`, `timestamp`) and ours.
fn event_data(view: &NotificationView) -> serde_json::Value {
    json!({
        "id": view.id,
        "title": view.title,
        "message": view.message,
        "notification_type": view.notification_type,
        "timestamp": view.timestamp,
        "created_at": view.created_at,
        "data": view.data,
        "user_id": view.user_id,
        "college_id": view.college_id,
    })
}

/// Serialises a JSON payload, refusing it beyond the configured event size (413).
pub fn check_size(state: &AppState, value: &serde_json::Value) -> Result<String, AppError> {
    let text = value.to_string();
    if text.len() > state.config.max_event_bytes {
        return Err(AppError::PayloadTooLarge(format!(
            "data is {} bytes; the limit is {} (POSTBOX_MAX_EVENT_BYTES)",
            text.len(),
            state.config.max_event_bytes
        )));
    }
    Ok(text)
}

/// `[a-z][a-z0-9_.-]*`, at most `max` characters: event and notification type names.
pub fn valid_name(name: &str, max: usize) -> bool {
    name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

/// A page of the caller's notifications, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    /// Unread notifications in all (not only on this page).
    pub unread_count: u64,
    pub results: Vec<NotificationView>,
    /// Pass as `before` to get the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

/// The caller's notifications (addressed to them or to their college).
pub async fn list(
    state: &AppState,
    user: &user::Model,
    unread_only: bool,
    before: Option<i64>,
    limit: u64,
) -> Result<NotificationPage, AppError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let rows = db::notifications::list(&state.db, user, unread_only, before, limit).await?;
    let next_before = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|(n, _)| n.id))
        .flatten();
    Ok(NotificationPage {
        unread_count: db::notifications::unread_count(&state.db, user).await?,
        results: rows
            .iter()
            .map(|(n, read)| NotificationView::new(n, *read))
            .collect(),
        next_before,
    })
}

/// Marks one of the caller's notifications read. Someone else's is a 404 (it is not the caller's to
/// see, so its existence is not confirmed either).
pub async fn mark_read(
    state: &AppState,
    user: &user::Model,
    id: i64,
) -> Result<NotificationView, AppError> {
    match db::notifications::mark_read(&state.db, user, id).await? {
        Some((n, read_at)) => Ok(NotificationView::new(&n, Some(read_at))),
        None => Err(AppError::NotFound(format!("notification {id} not found"))),
    }
}

/// What mark-all-read did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MarkedAll {
    /// Notifications that were unread and now are read.
    pub marked: u64,
    pub unread_count: u64,
}

/// Marks every notification the caller sees as read.
pub async fn mark_all_read(state: &AppState, user: &user::Model) -> Result<MarkedAll, AppError> {
    let marked = db::notifications::mark_all_read(&state.db, user).await?;
    Ok(MarkedAll {
        marked,
        // Re-read: a notification created meanwhile is unread again.
        unread_count: db::notifications::unread_count(&state.db, user).await?,
    })
}
