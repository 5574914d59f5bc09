//! Keeping every user's sequence for as long as promised, and no longer: stored events older than
//! `POSTBOX_EVENT_RETENTION` are removed in a periodic sweep (`crate::db::sequence`).

use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::db;

/// Removes kept events past `keep`, every tenth of it (at most every ten minutes), until `shutdown`.
pub async fn run_sweeper(db: DatabaseConnection, keep: Duration, shutdown: CancellationToken) {
    let every = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let older_than = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
        match db::sequence::sweep(&db, older_than).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(events = n, "kept events past their retention removed"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep kept events; trying again later"),
        }
    }
    tracing::debug!("sequence sweep stopped");
}
