//! Real parts for the domain modules' unit tests: a migrated SQLite database in a temporary folder and a
//! connection to the RabbitMQ of `AMQP_URL` (default `127.0.0.1:5672`, guest) under a prefix of its own,
//! so tests run side by side. No HTTP, no background tasks, no whole service: each test builds the
//! service it tests from these handles, as [`super::connect`] does.

use std::sync::Arc;

use clap::Parser;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    accounts::{Accounts, UserRequest, tokens::Caller},
    broker::Broker,
    chat::{Chat, ChatLimits, ChatParts, attachments::DiskStore},
    config::Config,
    db,
    delivery::{Delivery, outbox::Outbox, presence::Presence},
    limits::RateLimiter,
    notify::{Notify, NotifyLimits},
    support::{Support, SupportLimits},
};

/// The handles every domain service is built from.
pub struct Parts {
    pub config: Config,
    pub db: DatabaseConnection,
    pub broker: Broker,
    pub outbox: Outbox,
    pub accounts: Accounts,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    config: Config,
}

impl Parts {
    /// Connects both; panics with what to start when one is missing.
    pub async fn start() -> Parts {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut config = Wrapper::parse_from(["postbox"]).config;
        config.amqp_url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        config.broker_prefix = format!("pbu{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        config.database_url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("postbox.db").display()
        );
        config.data_dir = dir.path().to_owned();
        config.queue_expires_secs = 120;
        config.poll_timeout_secs = 1.0;
        let db = db::connect(&config.database_url, config.backend_timeout())
            .await
            .expect("the SQLite database");
        db::migrate(&db).await.expect("migrations");
        let shutdown = CancellationToken::new();
        let broker = Broker::connect(&config, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ: {e}; start it with scripts/services.sh"));
        let (outbox, _relay) = Outbox::new(db.clone(), broker.clone());
        let accounts = Accounts::new(
            db.clone(),
            broker.clone(),
            config.auth_cache(),
            config.backend_timeout(),
        );
        Parts {
            config,
            db,
            broker,
            outbox,
            accounts,
            shutdown,
            dir,
        }
    }

    /// A new member (their postbox declared), authenticated with their token.
    pub async fn user(&self, username: &str) -> Caller {
        self.user_as(username, "member").await
    }

    /// A new user with this role (`member`, `staff`, `admin`), authenticated with their token.
    pub async fn user_as(&self, username: &str, role: &str) -> Caller {
        let created = self
            .accounts
            .create_user(UserRequest {
                username,
                role: Some(role),
                ..UserRequest::default()
            })
            .await
            .expect("create a user");
        self.accounts
            .authenticate(&created.token, false)
            .await
            .expect("the new token authenticates")
    }

    pub fn chat(&self) -> Chat {
        Chat::new(ChatParts {
            db: self.db.clone(),
            broker: self.broker.clone(),
            outbox: self.outbox.clone(),
            accounts: self.accounts.clone(),
            limits: ChatLimits::from_config(&self.config),
            send_limit: RateLimiter::new(self.config.send_rate),
            typing_rate: self.config.typing_rate,
            attachments: Arc::new(DiskStore::new(self.dir.path())),
            max_uploads: self.config.max_uploads,
        })
    }

    pub fn support(&self, limits: SupportLimits) -> Support {
        Support::new(
            self.db.clone(),
            self.broker.clone(),
            self.outbox.clone(),
            RateLimiter::new(self.config.send_rate),
            limits,
        )
    }

    pub fn notify(&self) -> Notify {
        Notify::new(
            self.db.clone(),
            self.broker.clone(),
            self.outbox.clone(),
            self.accounts.clone(),
            NotifyLimits::from_config(&self.config),
        )
    }

    pub fn delivery(&self) -> Delivery {
        let presence = Presence::new(
            self.config.online_window(),
            self.db.clone(),
            self.broker.clone(),
        );
        Delivery::new(self.db.clone(), self.broker.clone(), &self.config, presence)
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        // Stop the consumers now; the postboxes expire by themselves (POSTBOX_QUEUE_EXPIRES), the
        // exchanges and the dead-letter queue are removed here.
        self.shutdown.cancel();
        let (url, topology) = (self.config.amqp_url.clone(), self.broker.topology().clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let properties = lapin::ConnectionProperties::default();
                let Ok(conn) = lapin::Connection::connect(&url, properties).await else {
                    return;
                };
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(topology.dead_letter_queue().into(), Default::default())
                        .await;
                    let control = format!("{}.control", topology.prefix);
                    for exchange in [
                        topology.exchange(),
                        topology.dead_letter_exchange(),
                        control,
                    ] {
                        let _ = ch
                            .exchange_delete(exchange.into(), Default::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "OK".into()).await;
            });
        })
        .join()
        .ok();
    }
}

/// One event as a test reads it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub kind: String,
    pub data: serde_json::Value,
}

/// The next batch of `session` (waiting up to 5 s), handed over (acknowledged) when `hand_over`.
pub async fn next_events(session: &mut crate::delivery::Session, hand_over: bool) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let batch = session.next(deadline).await.expect("a batch");
    let seen = batch
        .events()
        .map(|e| Seen {
            id: e.id.to_string(),
            kind: e.kind.to_string(),
            data: serde_json::from_slice(&e.data).expect("event data is JSON"),
        })
        .collect();
    if hand_over {
        batch.handed_over().await;
    }
    seen
}
