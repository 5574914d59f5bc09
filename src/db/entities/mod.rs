//! sea-orm entities, one file per table; the schema itself lives in `migrations/`.

pub mod api_token;
pub mod chat_message;
pub mod client;
pub mod conversation;
pub mod gap;
pub mod notification;
pub mod notification_read;
pub mod outbox;
pub mod service_token;
pub mod support_chat;
pub mod support_message;
pub mod user;
pub mod user_event;
