//! The test harness: `spawn_app()` starts the real service on port 0 against the real RabbitMQ and a
//! fresh database, with a random broker prefix so tests run in parallel without sharing postboxes.
//!
//! Backend: SQLite by default; `POSTBOX_TEST_DATABASE=postgres` runs every test on a fresh PostgreSQL
//! database (created on `POSTBOX_TEST_PG_URL`, default `postgres://postgres:postgres@127.0.0.1:5432/postgres`,
//! dropped afterwards). `AMQP_URL` picks the broker. Set `TEST_LOG=1` to see the service's logs.
//! A missing broker or database fails the test with the reason; nothing is skipped.

use std::{sync::Once, time::Duration};

use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use postbox::config::Config;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

static TRACING: Once = Once::new();

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn pg_admin_url() -> String {
    std::env::var("POSTBOX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn use_postgres() -> bool {
    std::env::var("POSTBOX_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// A test user: id and API token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub token: String,
}

pub struct TestApp {
    pub addr: String,
    pub config: Config,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: Option<tokio::task::JoinHandle<Result<(), postbox::RunError>>>,
    pub db: sea_orm::DatabaseConnection,
    _tmp: Option<tempfile::TempDir>,
    pg_database: Option<String>,
}

/// Overrides for [`spawn_app_with`].
pub fn test_config() -> Config {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: Config,
    }
    let mut config = Wrapper::parse_from(["postbox"]).config;
    config.amqp_url = amqp_url();
    config.broker_prefix = format!("pbt{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    config.poll_timeout_secs = 1.0;
    config.queue_expires_secs = 120;
    config.consumer_linger_secs = 2;
    config.backend_timeout_secs = 5;
    // Tests send bursts on purpose (and overflow postboxes); the limits have their own tests.
    config.send_rate = 100_000;
    config.max_undelivered = 100_000;
    config.support_max_unanswered = 100_000;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app on a fresh PostgreSQL database reached through `port` (a fault-injecting proxy), whatever
/// `POSTBOX_TEST_DATABASE` says.
pub async fn spawn_app_on_postgres_via(port: u16, customise: impl FnOnce(&mut Config)) -> TestApp {
    spawn(Some(port), customise).await
}

/// A second instance of `app`'s service: same database, same broker prefix, its own port.
pub async fn spawn_twin(app: &TestApp) -> TestApp {
    let database_url = app.config.database_url.clone();
    let prefix = app.config.broker_prefix.clone();
    let amqp = app.config.amqp_url.clone();
    spawn(None, move |c| {
        c.database_url = database_url;
        c.broker_prefix = prefix;
        c.amqp_url = amqp;
    })
    .await
}

pub async fn spawn_app_with(customise: impl FnOnce(&mut Config)) -> TestApp {
    spawn(None, customise).await
}

async fn spawn(pg_port: Option<u16>, customise: impl FnOnce(&mut Config)) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            postbox::telemetry::init(false);
        }
    });
    let mut config = test_config();
    let (tmp, pg_database) = if use_postgres() || pg_port.is_some() {
        let name = format!("pbt_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(pg_admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {}: {e}; start it (scripts/services.sh)",
                    pg_admin_url()
                )
            });
        use sea_orm::ConnectionTrait;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let base = pg_admin_url();
        let mut base = base
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(base);
        if let Some(port) = pg_port {
            base = base.replace(":5432", &format!(":{port}"));
        }
        config.database_url = format!("{base}/{name}");
        (None, Some(name))
    } else {
        let tmp = tempfile::tempdir().expect("temp dir");
        config.database_url = format!(
            "sqlite://{}?mode=rwc",
            tmp.path().join("postbox.db").display()
        );
        (Some(tmp), None)
    };
    customise(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(postbox::run(config.clone(), listener, shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Ready when the test endpoint answers (polling, never a fixed sleep).
    let mut ready = false;
    for _ in 0..200 {
        if server.is_finished() {
            let result = server.await.expect("server task");
            panic!("the service did not start: {result:?}");
        }
        let probe = client
            .get(format!("{addr}/api/v1/communication/poll/test/"))
            .send()
            .await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "the service did not become ready within 5 s");
    let db = postbox::db::connect(&config.database_url, Duration::from_secs(5))
        .await
        .expect("test database connection");
    TestApp {
        addr,
        config,
        client,
        shutdown,
        server: Some(server),
        db,
        _tmp: tmp,
        pg_database,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// Creates a user directly in the database (as `postbox create-user` does).
    pub async fn create_user(&self, username: &str, role: &str) -> TestUser {
        let display_name = format!("{username} display");
        let created = postbox::accounts::create_user(
            &self.db,
            postbox::accounts::UserRequest {
                username,
                display_name: Some(&display_name),
                college_id: None,
                role: Some(role),
            },
        )
        .await
        .expect("create user");
        TestUser {
            id: created.user.id,
            token: created.token,
        }
    }

    /// Creates a user in a college directly in the database.
    pub async fn create_user_in(&self, username: &str, role: &str, college: i64) -> TestUser {
        let created = postbox::accounts::create_user(
            &self.db,
            postbox::accounts::UserRequest {
                username,
                display_name: None,
                college_id: Some(college),
                role: Some(role),
            },
        )
        .await
        .expect("create user");
        TestUser {
            id: created.user.id,
            token: created.token,
        }
    }

    /// Creates a service token for the publish API directly in the database (as
    /// `postbox service-tokens create` does); returns its id and key.
    pub async fn service_token(&self, name: &str) -> (i64, String) {
        let secret = postbox::accounts::tokens::generate_service_token();
        let row = postbox::db::notifications::create_service_token(
            &self.db,
            name,
            secret.key_hash,
            secret.prefix,
        )
        .await
        .expect("create service token");
        (row.id, secret.key)
    }

    pub async fn member(&self, username: &str) -> TestUser {
        self.create_user(username, "member").await
    }

    pub async fn send(&self, from: &TestUser, to: i64, text: &str) -> Response {
        self.client
            .post(self.url("/api/v1/communication/chats/"))
            .header("Authorization", format!("Token {}", from.token))
            .json(&json!({"receiver": to, "message": text}))
            .send()
            .await
            .expect("send request")
    }

    /// Sends and asserts 201; returns the message JSON.
    pub async fn send_ok(&self, from: &TestUser, to: i64, text: &str) -> Value {
        let resp = self.send(from, to, text).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "send failed");
        resp.json().await.unwrap()
    }

    /// GET with the user's token; returns status and JSON body.
    pub async fn get_json(&self, user: &TestUser, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .header("Authorization", format!("Token {}", user.token))
            .send()
            .await
            .expect("GET request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON with the user's token; returns the response.
    pub async fn post_json(&self, user: &TestUser, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .header("Authorization", format!("Token {}", user.token))
            .json(&body)
            .send()
            .await
            .expect("POST request")
    }

    /// Polls a client's own postbox with a cursor (`None`: the client has seen nothing yet).
    pub async fn poll_cursor(
        &self,
        user: &TestUser,
        client_id: &str,
        last: Option<&str>,
    ) -> Vec<Value> {
        let mut query = vec![("client_id", client_id.to_owned())];
        if let Some(l) = last {
            query.push(("last_event_id", l.to_owned()));
        }
        let resp = self
            .client
            .get(self.url("/api/v1/communication/poll/events/"))
            .query(&query)
            .header("Authorization", format!("Token {}", user.token))
            .send()
            .await
            .expect("poll request");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["events"].as_array().expect("events array").clone()
    }

    /// Polls a registered client's own postbox.
    pub async fn poll_client(&self, user: &TestUser, client_id: &str) -> Vec<Value> {
        let resp = self
            .client
            .get(self.url(&format!(
                "/api/v1/communication/poll/events/?client_id={client_id}"
            )))
            .header("Authorization", format!("Token {}", user.token))
            .send()
            .await
            .expect("poll request");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["events"].as_array().expect("events array").clone()
    }

    pub async fn poll(&self, user: &TestUser) -> Response {
        self.client
            .get(self.url("/api/v1/communication/poll/events/"))
            .header("Authorization", format!("Token {}", user.token))
            .send()
            .await
            .expect("poll request")
    }

    /// Another instance's services on this app's database and broker, to call the domain layer
    /// directly (no HTTP, no outbox relay).
    pub async fn service(&self) -> postbox::Service {
        postbox::connect(self.config.clone(), self.shutdown.child_token())
            .await
            .unwrap()
    }

    /// The first page of `user`'s conversation with `other`, as JSON (asserts 200).
    pub async fn history(&self, user: &TestUser, other: i64) -> Value {
        let (status, page) = self
            .get_json(
                user,
                &format!("/api/v1/communication/chats/conversation/{other}/"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }

    /// Starts a long poll in the background; it resolves to how long the poll was held and its answer.
    pub fn spawn_poll(
        &self,
        user: &TestUser,
    ) -> tokio::task::JoinHandle<(std::time::Duration, Response)> {
        let request = self
            .client
            .get(self.url("/api/v1/communication/poll/events/"))
            .header("Authorization", format!("Token {}", user.token));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = request.send().await.expect("poll request");
            (started.elapsed(), resp)
        })
    }

    /// Polls once and returns the events array.
    pub async fn poll_events(&self, user: &TestUser) -> Vec<Value> {
        let resp = self.poll(user).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["events"].as_array().expect("events array").clone()
    }

    /// Polls until `n` events arrived or `tries` polls passed.
    pub async fn collect_events(&self, user: &TestUser, n: usize, tries: usize) -> Vec<Value> {
        let mut all = Vec::new();
        for _ in 0..tries {
            all.extend(self.poll_events(user).await);
            if all.len() >= n {
                break;
            }
        }
        all
    }

    pub fn queue_name(&self, user: &TestUser) -> String {
        format!("{}.user.{}", self.config.broker_prefix, user.id)
    }

    /// A direct AMQP connection, for inspecting or breaking the broker's state.
    pub async fn amqp(&self) -> Connection {
        Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ is not reachable at {}: {e}; start it (scripts/services.sh)",
                    amqp_url()
                )
            })
    }

    /// Ready-message count of a queue (passive declare), `None` when it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let conn = self.amqp().await;
        let ch = conn.create_channel().await.unwrap();
        let r = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| q.message_count());
        let _ = conn.close(200, "OK".into()).await;
        r
    }

    pub async fn delete_queue(&self, queue: &str) {
        let conn = self.amqp().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("delete queue");
        let _ = conn.close(200, "OK".into()).await;
    }

    /// Stops the service and waits for it to finish.
    pub async fn stop(&mut self) -> Result<(), postbox::RunError> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("service stops within 15 s")
                .expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let prefix = self.config.broker_prefix.clone();
        let pg = self.pg_database.take();
        // Remove what the test left on the shared servers (queues expire by themselves).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(conn) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(
                                format!("{prefix}.deadletters").into(),
                                Default::default(),
                            )
                            .await;
                        for exchange in ["events", "deadletter", "control"] {
                            let _ = ch
                                .exchange_delete(
                                    format!("{prefix}.{exchange}").into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                        }
                    }
                    let _ = conn.close(200, "OK".into()).await;
                }
                if let Some(name) = pg
                    && let Ok(admin) = sea_orm::Database::connect(pg_admin_url()).await
                {
                    use sea_orm::ConnectionTrait;
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// Waits until the gap recorded for `queue` counts `lost` events (dead letters are recorded
/// asynchronously), or fails after 10 s.
pub async fn wait_for_gap(app: &TestApp, queue: &str, lost: i64) {
    for _ in 0..200 {
        if let Ok(Some(gap)) = postbox::db::gaps::find(&app.db, queue).await
            && gap.lost >= lost
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no gap of {lost} events recorded for {queue}");
}

/// Asserts the JSON error shape and returns the body.
pub async fn assert_error(resp: Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status, "unexpected status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ct.starts_with("application/json"),
        "error content-type is {ct:?}"
    );
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["status"], status.as_u16(), "body status field: {body}");
    assert!(body["error"].is_string(), "body error code: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "body detail: {body}"
    );
    body
}
