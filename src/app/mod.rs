//! The service as a whole: [`connect`] builds its parts (each domain service with the handles it
//! needs), [`run`] serves HTTP and supervises the background tasks ([`tasks`]) until shutdown.

pub mod control;
pub mod tasks;
#[cfg(test)]
pub mod testing;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::tasks::Supervisor;
use crate::{
    accounts::Accounts,
    broker::{
        Broker, BrokerError,
        tls::{TlsSettings, TlsSetupError},
    },
    chat::{self, Chat, ChatLimits, ChatParts},
    config::{Config, ConfigError},
    db::{self, DbError},
    delivery::{
        self, Delivery,
        outbox::{Outbox, OutboxDone},
        presence::Presence,
    },
    http, limits, memory,
    notify::{Notify, NotifyLimits},
    state::AppState,
    support::{Support, SupportLimits},
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
    /// The TLS files for RabbitMQ cannot be read or used.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A connected service: the handlers' state, and what its background tasks need.
pub struct Service {
    pub state: AppState,
    /// Publishes stored events (its relay runs in the background).
    pub outbox: Outbox,
    done: OutboxDone,
}

/// Connects the database (and migrates it) and the broker, and builds every service.
pub async fn connect(config: Config, shutdown: CancellationToken) -> Result<Service, RunError> {
    config.validate()?;
    TlsSettings::from_config(&config)?;
    tracing::info!(database = %db::describe(&config.database_url), "opening the database");
    let db = db::connect(&config.database_url, config.backend_timeout()).await?;
    db::migrate(&db).await?;
    let broker = Broker::connect(&config, shutdown).await?;
    let (outbox, done) = Outbox::new(db.clone(), broker.clone());
    let accounts = Accounts::new(
        db.clone(),
        broker.clone(),
        config.auth_cache(),
        config.backend_timeout(),
    );
    // One budget of messages per user for chat and the support desk.
    let send_limit = limits::RateLimiter::new(config.send_rate);
    let chat = Chat::new(ChatParts {
        db: db.clone(),
        broker: broker.clone(),
        outbox: outbox.clone(),
        accounts: accounts.clone(),
        limits: ChatLimits::from_config(&config),
        send_limit: send_limit.clone(),
        typing_rate: config.typing_rate,
        attachments: Arc::new(chat::attachments::DiskStore::new(&config.data_dir)),
        max_uploads: config.max_uploads,
    });
    let presence = Presence::new(config.online_window(), db.clone(), broker.clone());
    let delivery = Delivery::new(db.clone(), broker.clone(), &config, presence);
    let notify = Notify::new(
        db.clone(),
        broker.clone(),
        outbox.clone(),
        accounts.clone(),
        NotifyLimits::from_config(&config),
    );
    let support = Support::new(
        db.clone(),
        broker.clone(),
        outbox.clone(),
        send_limit,
        SupportLimits::from_config(&config),
    );
    Ok(Service {
        state: AppState {
            config: Arc::new(config),
            accounts,
            chat,
            delivery,
            notify,
            support,
            db,
            broker,
        },
        outbox,
        done,
    })
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
    let service = connect(config, shutdown.clone()).await?;
    let supervisor = background_tasks(&service, &shutdown);
    let supervised = tokio::spawn(supervisor.run());
    let state = service.state;
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
    if let Err(e) = supervised.await {
        tracing::warn!(error = %e, "the background tasks' supervisor ended abnormally");
    }
    state.broker.close().await;
    state.db.clone().close().await.ok();
    tracing::info!("postbox stopped");
    Ok(())
}

/// Every background task of a running service, each started again by the supervisor should it end
/// before shutdown.
fn background_tasks(service: &Service, shutdown: &CancellationToken) -> Supervisor {
    let state = &service.state;
    let config = state.config.clone();
    let mut tasks = Supervisor::new(shutdown.clone());
    let (outbox, done, stop) = (
        service.outbox.clone(),
        service.done.clone(),
        shutdown.clone(),
    );
    let relay_after = config.backend_timeout() * 2;
    tasks.spawn("outbox relay", move || {
        outbox.clone().run(done.clone(), stop.clone(), relay_after)
    });
    let (broker, waiting, tokens, stop) = (
        state.broker.clone(),
        state.delivery.waiting().clone(),
        state.accounts.tokens().clone(),
        shutdown.clone(),
    );
    tasks.spawn("control listener", move || {
        crate::broker::control::run(
            broker.clone(),
            control::on_control(waiting.clone(), tokens.clone()),
            stop.clone(),
        )
    });
    let (db, waiting, tokens, stop) = (
        state.db.clone(),
        state.delivery.waiting().clone(),
        state.accounts.tokens().clone(),
        shutdown.clone(),
    );
    tasks.spawn("revocation sweep", move || {
        control::sweep_revocations(db.clone(), waiting.clone(), tokens.clone(), stop.clone())
    });
    let (db, broker, stop) = (state.db.clone(), state.broker.clone(), shutdown.clone());
    tasks.spawn("dead-letter recorder", move || {
        delivery::gaps::record_dead_letters(db.clone(), broker.clone(), stop.clone())
    });
    let (presence, stop) = (state.delivery.presence().clone(), shutdown.clone());
    let period =
        (config.online_window() / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    tasks.spawn("presence sweeper", move || {
        presence.clone().run_sweeper(stop.clone(), period)
    });
    let (every, stop) = (config.memory_trim(), shutdown.clone());
    tasks.spawn("heap trimmer", move || {
        memory::run_trimmer(every, stop.clone())
    });
    let (db, store, stop) = (
        state.db.clone(),
        state.chat.attachment_store(),
        shutdown.clone(),
    );
    let (every, grace) = (config.attachment_sweep(), config.attachment_grace());
    tasks.spawn("attachment sweep", move || {
        chat::attachments::run_sweeper(db.clone(), store.clone(), every, grace, stop.clone())
    });
    let (db, stop, keep) = (state.db.clone(), shutdown.clone(), config.event_retention());
    tasks.spawn("sequence sweep", move || {
        delivery::sequence::run_sweeper(db.clone(), keep, stop.clone())
    });
    tasks
}
