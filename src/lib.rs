//! Postbox: real-time chat over plain HTTP, with a durable RabbitMQ postbox per user.
//!
//! [`run`] is the whole service: it connects the database (and migrates it) and the broker, starts the
//! background tasks, serves HTTP on the given listener until `shutdown` is cancelled, then answers the
//! waiting polls, drains, and closes everything. `main.rs` only parses the command line ([`cli`]).

pub mod accounts;
pub mod app;
pub mod broker;
pub mod chat;
pub mod cli;
pub mod config;
pub mod db;
pub mod delivery;
pub mod events;
pub mod http;
pub mod limits;
pub mod memory;
pub mod notify;
pub mod state;
pub mod support;
pub mod telemetry;
pub mod validate;

pub use app::{RunError, Service, connect, run};
