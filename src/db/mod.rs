//! The relational store: connection, migrations, entities and the queries the domain needs.
//!
//! One codebase for SQLite (the embedded default) and PostgreSQL; the URL picks the backend. This module
//! owns every SQL statement and the classification of database errors ([`DbError`]); it knows nothing about
//! HTTP or the broker. Transactions never span a broker round trip: callers publish after commit.

pub mod batch;
pub mod chat;
pub mod clients;
pub mod entities;
pub mod gaps;
pub mod notifications;
pub mod outbox;
pub mod sequence;
pub mod support;
pub mod users;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, SqlErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};

use crate::config::redact_url;

/// Now, in whole milliseconds (what the API prints, and what clients echo back as `since`).
pub(crate) fn now_ms() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(3)
}

/// The time of a message in a thread (a conversation, a support chat) whose last message is at
/// `previous`: now in whole milliseconds (what the API prints and clients echo back as `since`), or 1 ms
/// after `previous` when that is not earlier. Called under the thread's row lock, it makes the thread's
/// times unique, strictly increasing and in commit order, so `created_at > since` with a time Postbox
/// handed out neither repeats nor skips a message, also for messages stored in the same millisecond.
pub(crate) fn next_message_time(
    previous: Option<chrono::DateTime<chrono::Utc>>,
) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    let now = now_ms();
    match previous.map(|p| p.trunc_subsecs(3)) {
        Some(p) if p >= now => p + chrono::Duration::milliseconds(1),
        _ => now,
    }
}

/// A database failure, classified so the HTTP layer can answer 409 or 503 instead of a blind 500.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (refused, pool timeout, I/O error).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique key already exists.
    #[error("already exists: {0}")]
    Conflict(String),
    /// Anything else: a bug or a schema mismatch.
    #[error("database error: {0}")]
    Other(#[source] DbErr),
}

impl From<DbErr> for DbError {
    fn from(err: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(msg)) = err.sql_err() {
            return DbError::Conflict(msg);
        }
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbError::Unavailable(err.to_string()),
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))
                if is_unavailable(e) =>
            {
                DbError::Unavailable(err.to_string())
            }
            _ => DbError::Other(err),
        }
    }
}

impl DbError {
    /// The same failure for another caller (a grouped query or write failed for all of its callers):
    /// the kind is kept, the underlying error is carried as text.
    pub fn shared(&self) -> DbError {
        match self {
            DbError::Unavailable(m) => DbError::Unavailable(m.clone()),
            DbError::Conflict(m) => DbError::Conflict(m.clone()),
            DbError::Other(e) => DbError::Other(DbErr::Custom(e.to_string())),
        }
    }
}

fn is_unavailable(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
        // SQLite's SQLITE_BUSY family ("database is locked"): another process held the write lock longer
        // than the busy timeout. Transient, so the client is told to retry rather than shown a 500.
        E::Database(db) => {
            db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                .is_some()
                && db
                    .code()
                    .and_then(|code| code.parse::<u32>().ok())
                    .is_some_and(|code| code & 0xff == 5)
        }
        _ => false,
    }
}

/// Starts a transaction that will write. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`):
/// a deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another process
/// (a second instance on the same file) wrote in between, because the busy timeout does not apply to a
/// stale read snapshot. PostgreSQL ignores the option.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// The connection pool now: connections open, of which idle (for the dashboards).
pub fn pool_state(db: &DatabaseConnection) -> (u32, usize) {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => (0, 0),
    }
}

/// Which database a URL names, for people: the SQLite file's absolute path (a relative one is
/// resolved against the current directory, so a command run elsewhere would use another file), or
/// the server URL without its password.
pub fn describe(url: &str) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return redact_url(url);
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return "SQLite in memory".to_owned();
    }
    let path = std::path::Path::new(path);
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    format!("SQLite file {}", absolute.display())
}

/// Connects to the database named by `url`, creating the SQLite file when needed.
pub async fn connect(url: &str, timeout: Duration) -> Result<DatabaseConnection, DbError> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.connect_timeout(timeout)
        .acquire_timeout(timeout)
        .sqlx_logging(false)
        // sqlx pings a pooled connection when it is taken (and again when it is given back): one
        // more round trip per statement, to the SQLite worker thread or to PostgreSQL. Only a
        // connection idle for a while can have been dropped unnoticed (one that failed in use fails
        // its release ping and is closed), so only those are pinged before use.
        .test_before_acquire_if_idle_for(Duration::from_secs(1))
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        });
    if url.starts_with("postgres") {
        opts.max_connections(32).min_connections(1);
    }
    match tokio::time::timeout(timeout + Duration::from_secs(1), Database::connect(opts)).await {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(DbError::Unavailable(format!(
            "cannot open database {}: {e}; check DATABASE_URL and that the database server is running",
            redact_url(url)
        ))),
        Err(_) => Err(DbError::Unavailable(format!(
            "timed out connecting to database {}; check DATABASE_URL and that the database server is running",
            redact_url(url)
        ))),
    }
}

/// Applies every pending migration. Safe to run from several instances at once on PostgreSQL: the
/// migration runs under a transaction-scoped advisory lock, so concurrent starts queue instead of racing.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    if db.get_database_backend() == DbBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock(7510226001)",
        ))
        .await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await?;
    } else {
        Migrator::up(db, None).await?;
    }
    Ok(())
}

/// A cheap round trip, for readiness checks.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbError> {
    db.ping().await.map_err(DbError::from)
}
