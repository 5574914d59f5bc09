//! Notifications: stored, with per-user read state, and announced through the postboxes.
//!
//! Staff and admins (or a host application through the publish API) address a notification to one
//! user or to a whole college. It is stored, and the `notification` event is committed with it to the
//! outbox: a college notification is **one** publish to `college.<id>`, which RabbitMQ routes into every
//! member's postbox (each postbox is bound to its college's key). Members list their notifications and
//! mark them read, one by one or all at once.

pub mod publish;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::{
    accounts::{self, Accounts, NeedsRole, tokens::Role},
    broker::{Broker, BrokerError},
    config::Config,
    db::{
        self, DbError,
        entities::{notification, user},
        notifications::{NewNotification, Reach},
    },
    delivery::outbox::Outbox,
    events::{self, Envelope, data, rfc3339},
    validate::{self, Invalid, MAX_ID},
};

/// Why a notification or a host publish was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Forbidden(#[from] NeedsRole),
    #[error("user {0} does not exist")]
    NoSuchUser(i64),
    /// Users a host publish addressed that do not exist: nothing was published.
    #[error("no such users: {}; nothing was published", .0.iter().map(i64::to_string).collect::<Vec<_>>().join(", "))]
    NoSuchUsers(Vec<i64>),
    #[error("notification {0} not found")]
    NoSuchNotification(i64),
    #[error("give exactly one of `users` (a list of user ids) and `college_id`")]
    NoAudience,
    /// `data` beyond the event size limit.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The notifications service (and the host publish API, [`publish`]). Cheap to clone.
#[derive(Clone)]
pub struct Notify {
    db: DatabaseConnection,
    broker: Broker,
    outbox: Outbox,
    accounts: Accounts,
    limits: Arc<NotifyLimits>,
}

/// Notify's slice of the configuration.
#[derive(Debug, Clone)]
pub struct NotifyLimits {
    pub max_message_chars: usize,
    /// Bytes of JSON a notification's or host event's `data` may have.
    pub max_event_bytes: usize,
}

impl NotifyLimits {
    pub fn from_config(config: &Config) -> Self {
        NotifyLimits {
            max_message_chars: config.max_message_chars,
            max_event_bytes: config.max_event_bytes,
        }
    }
}

/// The longest title.
pub const MAX_TITLE_CHARS: usize = 200;
/// The largest history page.
pub const MAX_PAGE: u64 = 200;

/// A notification as its reader sees it (and, without the read state, as the event carries it).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": 44, "title": "Exams", "message": "The schedule is out", "notification_type": "notice", "data": {"url": "/exams"}, "user_id": 9, "college_id": null, "created_at": "2026-12-04T18:00:00.000Z", "timestamp": "2026-12-04T18:00:00.000Z", "is_read": false, "read_at": null}))]
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
#[schema(example = json!({"id": 44, "title": "Exams", "message": "The schedule is out", "notification_type": "notice", "data": {"url": "/exams"}, "user_id": 9, "college_id": null, "created_at": "2026-12-04T18:00:00.000Z", "timestamp": "2026-12-04T18:00:00.000Z", "is_read": false, "read_at": null, "recipients": 1, "postboxes": 2}))]
pub struct Created {
    #[serde(flatten)]
    pub notification: NotificationView,
    /// Users addressed: 1, or the college's members.
    pub recipients: u64,
    /// Postboxes the event was routed to (each user's default postbox plus registered clients), as
    /// Postbox records them.
    pub postboxes: u64,
}

impl Notify {
    pub fn new(
        db: DatabaseConnection,
        broker: Broker,
        outbox: Outbox,
        accounts: Accounts,
        limits: NotifyLimits,
    ) -> Self {
        Notify {
            db,
            broker,
            outbox,
            accounts,
            limits: Arc::new(limits),
        }
    }
}

impl Notify {
    /// Creates a notification as a staff member or admin (members get 403).
    pub async fn create_as(
        &self,
        caller: &user::Model,
        draft: Draft,
    ) -> Result<Created, NotifyError> {
        accounts::require(caller, Role::Staff)?;
        self.create(draft, Some(caller.id)).await
    }

    /// Validates, stores and announces a notification. `created_by` is `None` for host applications.
    pub async fn create(
        &self,
        draft: Draft,
        created_by: Option<i64>,
    ) -> Result<Created, NotifyError> {
        validate::check("title", &draft.title)?;
        let title = draft.title.trim().to_owned();
        if validate::is_blank(&title) || title.chars().count() > MAX_TITLE_CHARS {
            return Err(invalid(
                "title",
                format!("must be 1 to {MAX_TITLE_CHARS} characters, not blank"),
            ));
        }
        validate::check("message", &draft.message)?;
        if draft.message.chars().count() > self.limits.max_message_chars {
            return Err(invalid(
                "message",
                format!(
                    "is longer than {} characters",
                    self.limits.max_message_chars
                ),
            ));
        }
        let notification_type = draft.notification_type.unwrap_or_else(|| "notice".into());
        if !valid_name(&notification_type, 32) {
            return Err(invalid(
                "notification_type",
                "must be 1 to 32 characters: lowercase letters, digits, `_`, `-` or `.`, starting with a letter",
            ));
        }
        let data = match draft.data {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => Some(self.check_size(&v)?),
            Some(_) => return Err(invalid("data", "must be a JSON object")),
        };
        let (user_id, college_id) = match draft.target {
            Target::User(id) => {
                if !(1..=MAX_ID).contains(&id) || !self.accounts.user_exists(id).await? {
                    return Err(NotifyError::NoSuchUser(id));
                }
                (Some(id), None)
            }
            Target::College(id) => {
                if !(0..=MAX_ID).contains(&id) {
                    return Err(invalid("college_id", "must be a positive integer"));
                }
                (None, Some(id))
            }
        };
        // While RabbitMQ is known to be down, refuse (503) rather than store what nobody is told of.
        self.broker.ensure_available().await?;
        let (stored, pending) = db::notifications::create(
            &self.db,
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
                let audience = match draft.target {
                    Target::User(id) => events::Audience::Users(vec![id]),
                    Target::College(id) => events::Audience::College(id),
                };
                (vec![audience], Envelope::of(&event_data(&view)))
            },
        )
        .await?;
        match draft.target {
            Target::User(_) => self.outbox.publish_committed(&pending).await,
            // RabbitMQ confirms a broadcast only once every member's postbox has it on disk (seconds for
            // thousands of members): the outbox row already guarantees it, so the sender is not kept waiting.
            Target::College(_) => {
                let outbox = self.outbox.clone();
                tokio::spawn(async move { outbox.publish_committed(&pending).await });
            }
        }
        let (recipients, postboxes) = match draft.target {
            Target::User(id) => db::notifications::reach(&self.db, Reach::Users(&[id])).await?,
            Target::College(id) => db::notifications::reach(&self.db, Reach::College(id)).await?,
        };
        Ok(Created {
            notification: NotificationView::new(&stored, None),
            recipients,
            postboxes,
        })
    }

    /// Serialises a JSON payload, refusing it beyond the configured event size (413).
    pub fn check_size(&self, value: &serde_json::Value) -> Result<String, NotifyError> {
        let text = value.to_string();
        if text.len() > self.limits.max_event_bytes {
            return Err(NotifyError::TooLarge(format!(
                "data is {} bytes; the limit is {} (POSTBOX_MAX_EVENT_BYTES)",
                text.len(),
                self.limits.max_event_bytes
            )));
        }
        Ok(text)
    }

    /// The caller's notifications (addressed to them or to their college).
    pub async fn list(
        &self,
        user: &user::Model,
        unread_only: bool,
        before: Option<i64>,
        limit: u64,
    ) -> Result<NotificationPage, NotifyError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let rows = db::notifications::list(&self.db, user, unread_only, before, limit).await?;
        let next_before = (rows.len() as u64 == limit)
            .then(|| rows.last().map(|(n, _)| n.id))
            .flatten();
        Ok(NotificationPage {
            unread_count: db::notifications::unread_count(&self.db, user).await?,
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
        &self,
        user: &user::Model,
        id: i64,
    ) -> Result<NotificationView, NotifyError> {
        match db::notifications::mark_read(&self.db, user, id).await? {
            Some((n, read_at)) => Ok(NotificationView::new(&n, Some(read_at))),
            None => Err(NotifyError::NoSuchNotification(id)),
        }
    }

    /// Marks every notification the caller sees as read.
    pub async fn mark_all_read(&self, user: &user::Model) -> Result<MarkedAll, NotifyError> {
        let marked = db::notifications::mark_all_read(&self.db, user).await?;
        Ok(MarkedAll {
            marked,
            // Re-read: a notification created meanwhile is unread again.
            unread_count: db::notifications::unread_count(&self.db, user).await?,
        })
    }
}

/// The event's data: the seeds' fields (`title`, `message`, `notification_type`, `timestamp`) and ours.
fn event_data(view: &NotificationView) -> data::Notification {
    data::Notification {
        id: view.id,
        title: view.title.clone(),
        message: view.message.clone(),
        notification_type: view.notification_type.clone(),
        timestamp: view.timestamp.clone(),
        created_at: view.created_at.clone(),
        data: view.data.clone(),
        user_id: view.user_id,
        college_id: view.college_id,
    }
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
#[schema(example = json!({"unread_count": 1, "results": [{"id": 44, "title": "Exams", "message": "The schedule is out", "notification_type": "notice", "data": {"url": "/exams"}, "user_id": 9, "college_id": null, "created_at": "2026-12-04T18:00:00.000Z", "timestamp": "2026-12-04T18:00:00.000Z", "is_read": false, "read_at": null}], "next_before": null}))]
pub struct NotificationPage {
    /// Unread notifications in all (not only on this page).
    pub unread_count: u64,
    pub results: Vec<NotificationView>,
    /// Pass as `before` to get the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

/// What mark-all-read did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MarkedAll {
    /// Notifications that were unread and now are read.
    pub marked: u64,
    pub unread_count: u64,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> NotifyError {
    Invalid::new(field, reason).into()
}

#[cfg(test)]
mod tests {
    use super::{Draft, NotifyError, Target};
    use crate::{
        app::testing::{Parts, next_events},
        delivery::Ack,
    };

    fn draft(target: Target, title: &str) -> Draft {
        Draft {
            target,
            title: title.into(),
            message: "the body".into(),
            notification_type: None,
            data: Some(serde_json::json!({"link": "/grades"})),
        }
    }

    #[tokio::test]
    async fn a_notification_is_stored_announced_and_read() {
        let parts = Parts::start().await;
        let (notify, delivery) = (parts.notify(), parts.delivery());
        let bob = parts.user("bob").await;
        let staff = parts.user_as("teacher", "staff").await;
        let mut bobs = delivery.open(&bob, None, Ack::OnHandOver).await.unwrap();

        let refused = notify
            .create_as(&bob.user, draft(Target::User(staff.user.id), "hi"))
            .await;
        assert!(
            matches!(refused, Err(NotifyError::Forbidden(_))),
            "{refused:?}"
        );
        let created = notify
            .create_as(
                &staff.user,
                draft(Target::User(bob.user.id), "Grades are out"),
            )
            .await
            .unwrap();
        assert_eq!(created.recipients, 1);

        let events = next_events(&mut bobs, true).await;
        let event = events
            .iter()
            .find(|e| e.kind == "notification")
            .unwrap_or_else(|| panic!("no notification in {events:?}"));
        assert_eq!(event.data["id"], created.notification.id);
        assert_eq!(event.data["title"], "Grades are out");

        let page = notify.list(&bob.user, true, None, 20).await.unwrap();
        assert_eq!(page.unread_count, 1);
        assert_eq!(
            page.results[0].data,
            Some(serde_json::json!({"link": "/grades"}))
        );
        notify
            .mark_read(&bob.user, created.notification.id)
            .await
            .unwrap();
        assert_eq!(
            notify
                .list(&bob.user, true, None, 20)
                .await
                .unwrap()
                .unread_count,
            0
        );
    }
}
