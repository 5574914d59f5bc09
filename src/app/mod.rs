//! The service as a whole: [`connect`] builds its parts, [`run`] serves HTTP and supervises the
//! background tasks until shutdown.

pub mod control;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    accounts,
    broker::{Broker, BrokerError},
    chat,
    config::{Config, ConfigError},
    db,
    db::DbError,
    delivery,
    delivery::outbox::Outbox,
    delivery::presence::Presence,
    http, limits, memory,
    state::AppState,
    telemetry,
};

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Connects everything and builds the shared state (used by [`run`] and by tools that need the state).
pub async fn connect(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(AppState, delivery::outbox::OutboxDone), RunError> {
    config.validate()?;
    let db = db::connect(&config.database_url, config.backend_timeout()).await?;
    db::migrate(&db).await?;
    let broker = Broker::connect(&config, shutdown).await?;
    let (outbox, done) = Outbox::new(db.clone(), broker.clone());
    let state = AppState {
        presence: Presence::new(config.online_window(), db.clone(), broker.clone()),
        deliveries: chat::Deliveries::new(db.clone(), broker.clone(), config.message_ttl()),
        clients: delivery::clients::Clients::default(),
        typing_limit: limits::RateLimiter::new(config.typing_rate),
        typing_signals: limits::throttle::Throttle::new(chat::typing_period(config.typing_ttl())),
        send_limit: limits::RateLimiter::new(config.send_rate),
        // Retry after the default hold: by then an ordinary poll of the user has ended.
        poll_slots: limits::PollSlots::new(
            config.max_polls_per_user,
            config.poll_timeout_secs.ceil().max(1.0) as u64,
        ),
        waiting: delivery::waiting::Waiting::default(),
        tokens: accounts::tokens::TokenCache::new(config.auth_cache()),
        token_lookups: accounts::tokens::TokenLookups::new(db.clone()),
        gap_lookups: delivery::gaps::GapLookups::new(db.clone()),
        users: accounts::KnownUsers::default(),
        messages: chat::Messages::new(db.clone(), outbox.clone()),
        attachments: Arc::new(chat::attachments::DiskStore::new(&config.data_dir)),
        uploads: Arc::new(tokio::sync::Semaphore::new(config.max_uploads)),
        config: Arc::new(config),
        db,
        broker,
        outbox,
    };
    Ok((state, done))
}

/// Runs the service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // The metrics recorder counts from the start (installed at the first scrape, it missed what came
    // before: polls already waiting then left `postbox_polls_in_flight` below zero for good).
    telemetry::metrics();
    if config.queue_expires_secs < 2 * config.message_ttl_secs {
        tracing::warn!(
            queue_expires = config.queue_expires_secs,
            message_ttl = config.message_ttl_secs,
            "POSTBOX_QUEUE_EXPIRES is below twice POSTBOX_MESSAGE_TTL: an idle postbox may be deleted with unexpired events in it"
        );
    }
    let (state, done) = connect(config, shutdown.clone()).await?;
    let relay_after = state.config.backend_timeout() * 2;
    let outbox_task = tokio::spawn(
        state
            .outbox
            .clone()
            .run(done, shutdown.clone(), relay_after),
    );
    let control = tokio::spawn(crate::broker::control::run(
        state.broker.clone(),
        control::on_control(state.waiting.clone(), state.tokens.clone()),
        shutdown.clone(),
    ));
    let revocations = tokio::spawn(control::sweep_revocations(
        state.db.clone(),
        state.waiting.clone(),
        state.tokens.clone(),
        shutdown.clone(),
    ));
    let dead_letters = tokio::spawn(delivery::gaps::run_dead_letter_consumer(
        state.db.clone(),
        state.broker.clone(),
        shutdown.clone(),
    ));
    let sweeper = tokio::spawn(state.presence.clone().run_sweeper(
        shutdown.clone(),
        (state.config.online_window() / 10).clamp(Duration::from_secs(1), Duration::from_secs(30)),
    ));
    let trimmer = tokio::spawn(memory::run_trimmer(
        state.config.memory_trim(),
        shutdown.clone(),
    ));
    let attachment_sweep = tokio::spawn(chat::attachments::run_sweeper(
        state.db.clone(),
        state.attachments.clone(),
        state.config.attachment_sweep(),
        state.config.attachment_grace(),
        shutdown.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "postbox listening");
    let app = http::router(state.clone());
    // Waiting polls are answered when `shutdown` fires (the hub watches it), so the drain is short.
    http::server::serve(
        listener,
        app,
        http::server::Limits::from_config(&state.config),
        shutdown.clone(),
    )
    .await;
    // Now stop the rest.
    shutdown.cancel();
    if let Err(e) = outbox_task.await {
        tracing::warn!(error = %e, "outbox task ended abnormally");
    }
    if let Err(e) = control.await {
        tracing::warn!(error = %e, "control listener ended abnormally");
    }
    if let Err(e) = revocations.await {
        tracing::warn!(error = %e, "revocation sweep ended abnormally");
    }
    if let Err(e) = dead_letters.await {
        tracing::warn!(error = %e, "dead-letter consumer ended abnormally");
    }
    if let Err(e) = sweeper.await {
        tracing::warn!(error = %e, "presence sweeper ended abnormally");
    }
    if let Err(e) = trimmer.await {
        tracing::warn!(error = %e, "heap trimmer ended abnormally");
    }
    if let Err(e) = attachment_sweep.await {
        tracing::warn!(error = %e, "attachment sweep ended abnormally");
    }
    state.broker.close().await;
    state.db.clone().close().await.ok();
    tracing::info!("postbox stopped");
    Ok(())
}
