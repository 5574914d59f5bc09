//! `postbox serve`: the service until SIGINT or SIGTERM.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Listens on `POSTBOX_BIND` and runs the service ([`crate::run`]) until a signal asks it to stop.
pub async fn run(config: Config) -> anyhow::Result<i32> {
    crate::telemetry::init(config.log_json);
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {} (POSTBOX_BIND)", config.bind))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    crate::run(config, listener, shutdown).await?;
    Ok(0)
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
