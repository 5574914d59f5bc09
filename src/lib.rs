//! Postbox: real-time chat over plain HTTP, with a durable RabbitMQ postbox per user.
//!
//! [`run`] is the whole service: it connects the database (and migrates it) and the broker, starts the
//! background tasks, serves HTTP on the given listener until `shutdown` is cancelled, then answers the
//! waiting polls, drains, and closes everything. `main.rs` only parses the command line ([`cli`]).
//!
//! # Layout
//!
//! One module per concern; dependencies run one way, from the top down (docs/ARCHITECTURE.md has the
//! walls and the walk of a message):
//!
//! - [`cli`]: one file per command. [`app`]: builds the services and runs them, supervises the
//!   background tasks. [`state`]: the handles the handlers share.
//! - [`http`]: routers per resource, extractors, the one error-to-JSON mapping, OpenAPI, the server loop.
//! - The domain, which knows no HTTP: [`chat`], [`notify`], [`support`]; [`delivery`] (a poll's and a
//!   stream's whole life, the outbox relay); [`accounts`] (users and tokens).
//! - The stores: [`broker`] (RabbitMQ: topology, publisher, consumer hub, control bus) and [`db`]
//!   (entities, queries, the outbox table).
//! - Shared below them: [`events`] (wire types), [`validate`], [`limits`], [`config`], [`telemetry`],
//!   [`memory`].

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
