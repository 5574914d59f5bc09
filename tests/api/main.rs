//! Integration tests: the real service against the real RabbitMQ and a real database (one binary).

mod admin;
mod attachments;
mod auth;
mod broker;
mod chats;
mod cli;
mod connections;
mod contract;
mod conversation;
mod delivery;
mod demo;
mod faults;
mod hardening;
mod helpers;
mod loadtest;
mod notifications;
mod openapi;
mod ops;
mod poll;
mod sequence;
mod sse;
mod support;
mod text;
mod tls;
mod tokens;
