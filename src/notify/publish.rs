//! The publish API for host applications: an event of the host's own type, with a JSON object as
//! payload, pushed into the postboxes of a list of users or of a whole college.
//!
//! Custom events are not stored: the host keeps its own data, and Postbox delivers. They are published
//! with publisher confirms, so an answer of 200 means RabbitMQ holds the event in every addressed
//! postbox that exists; 503 means nothing is guaranteed and the host should retry. A retry is a new
//! event with a new id: hosts that need exactly-once put their own key in `data`. The event type
//! `notification` is special: it is stored as a notification (with read state, listed by
//! `GET /notifications/`), exactly as when staff create one.

use serde::Serialize;

use super::{Draft, Notify, NotifyError, Target, invalid, valid_name};
use crate::{
    db::{self, entities::service_token, notifications::Reach},
    events::{Audience, Envelope, kind},
    validate::MAX_ID,
};

/// The most users one publish may address (use a college beyond that).
pub const MAX_USERS: usize = 1000;

/// Event types a host may not publish: Postbox's own, whose shapes clients rely on.
pub const RESERVED: &[&str] = &[
    kind::MESSAGE,
    kind::TYPING,
    kind::READ_RECEIPT,
    kind::PRESENCE,
    kind::DELIVERED,
    kind::RESYNC,
    "connected",
    "heartbeat",
    "support_message",
    "support_chat",
];

/// A publish request, validated by `Notify::publish`.
#[derive(Debug, Clone)]
pub struct Request {
    pub event: String,
    pub data: serde_json::Value,
    pub users: Option<Vec<i64>>,
    pub college_id: Option<i64>,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"event_id": "0193a1f2-7c1e-7b3a-9f00-5d2c4e8a1b00", "event": "order_shipped", "recipients": 2, "postboxes": 3, "notification_ids": []}))]
pub struct Published {
    /// The event's id, as clients see it (for a `notification`, the stored notification's event).
    pub event_id: Option<String>,
    pub event: String,
    /// Users addressed: the list's length, or the college's members.
    pub recipients: u64,
    /// Postboxes the event was routed to: each addressed user's default postbox plus registered
    /// clients, as Postbox records them.
    pub postboxes: u64,
    /// The stored notifications' ids, for `event: "notification"` (one per listed user, or one for a
    /// college).
    pub notification_ids: Vec<i64>,
}

impl Notify {
    /// Validates and publishes a host's event.
    pub async fn publish(
        &self,
        caller: &service_token::Model,
        req: Request,
    ) -> Result<Published, NotifyError> {
        if !valid_name(&req.event, 64) {
            return Err(invalid(
                "event",
                "must be 1 to 64 characters: lowercase letters, digits, `_`, `-` or `.`, starting with a letter",
            ));
        }
        if RESERVED.contains(&req.event.as_str()) {
            return Err(invalid(
                "event",
                format!(
                    "`{}` is Postbox's own event type; pick another name",
                    req.event
                ),
            ));
        }
        if !req.data.is_object() {
            return Err(invalid("data", "must be a JSON object"));
        }
        let users = match (&req.users, req.college_id) {
            (Some(users), None) => Some(self.checked_users(users).await?),
            (None, Some(college)) if (0..=MAX_ID).contains(&college) => None,
            (None, Some(_)) => return Err(invalid("college_id", "must be a positive integer")),
            _ => {
                return Err(NotifyError::NoAudience);
            }
        };
        let target = match (&users, req.college_id) {
            (Some(users), _) => Reach::Users(users),
            (None, college) => Reach::College(college.unwrap_or_default()),
        };
        if req.event == kind::NOTIFICATION {
            return self.publish_notification(caller, req.data, target).await;
        }
        self.check_size(&req.data)?;
        self.broker.ensure_available().await?;
        let event = Envelope::custom(&req.event, &req.data);
        let audience = match target {
            Reach::Users(users) => Audience::Users(users.to_vec()),
            Reach::College(college) => Audience::College(college),
        };
        self.broker.publish_event(&audience, &event).await?;
        let (recipients, postboxes) = db::notifications::reach(&self.db, target).await?;
        tracing::info!(service = %caller.name, event = %req.event, recipients, postboxes, "host event published");
        Ok(Published {
            event_id: Some(event.id),
            event: req.event,
            recipients,
            postboxes,
            notification_ids: Vec::new(),
        })
    }

    /// The distinct user ids of a request, all existing (400 naming the unknown ones otherwise).
    async fn checked_users(&self, users: &[i64]) -> Result<Vec<i64>, NotifyError> {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() || users.len() > MAX_USERS {
            return Err(invalid(
                "users",
                format!("must list 1 to {MAX_USERS} user ids"),
            ));
        }
        if users.iter().any(|id| !(1..=MAX_ID).contains(id)) {
            return Err(invalid("users", "ids must be positive integers"));
        }
        let known = db::notifications::existing_users(&self.db, &users).await?;
        let unknown: Vec<i64> = users
            .iter()
            .filter(|id| !known.contains(id))
            .copied()
            .collect();
        if !unknown.is_empty() {
            return Err(NotifyError::NoSuchUsers(unknown));
        }
        Ok(users)
    }

    /// `event: "notification"` from a host: stored like a staff notification, one per user in a list.
    async fn publish_notification(
        &self,
        caller: &service_token::Model,
        data: serde_json::Value,
        target: Reach<'_>,
    ) -> Result<Published, NotifyError> {
        let text = |key: &str| data.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let title = text("title")
            .ok_or_else(|| invalid("data", "a notification needs `data.title` (a string)"))?;
        let draft = |target| Draft {
            target,
            title: title.clone(),
            message: text("message").unwrap_or_default(),
            notification_type: text("notification_type"),
            data: data.get("data").cloned(),
        };
        let targets: Vec<Target> = match target {
            Reach::Users(users) => users.iter().map(|&u| Target::User(u)).collect(),
            Reach::College(college) => vec![Target::College(college)],
        };
        let mut ids = Vec::with_capacity(targets.len());
        for t in targets {
            ids.push(self.create(draft(t), None).await?.notification.id);
        }
        let (recipients, postboxes) = db::notifications::reach(&self.db, target).await?;
        tracing::info!(service = %caller.name, recipients, postboxes, "host notification published");
        Ok(Published {
            event_id: None,
            event: kind::NOTIFICATION.to_owned(),
            recipients,
            postboxes,
            notification_ids: ids,
        })
    }
}
