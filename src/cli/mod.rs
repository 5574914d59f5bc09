//! The `postbox` command line: `serve`, `migrate`, `create-user`, `check-rabbitmq`, `loadtest`.

pub mod check_rabbitmq;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{accounts, config::Config, db};

#[derive(Debug, Parser)]
#[command(
    name = "postbox",
    version,
    about = "Real-time chat over plain HTTP with durable RabbitMQ postboxes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (applies pending migrations first).
    Serve {
        #[command(flatten)]
        config: Config,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        config: Config,
    },
    /// Create a user and print it as JSON with its API token.
    CreateUser {
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        college: Option<i64>,
        /// member, staff or admin.
        #[arg(long, default_value = "member")]
        role: String,
        #[command(flatten)]
        config: Config,
    },
    /// List, create and revoke a user's API tokens.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Create, list and revoke service tokens: what host applications use for `POST /api/v1/publish/`.
    ServiceTokens {
        #[command(subcommand)]
        action: ServiceTokensAction,
    },
    /// Print the OpenAPI document (or write it to a file), for review diffs and client generators.
    Openapi {
        /// Write to this file instead of standard output (the repository keeps `docs/openapi.json`).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Check the RabbitMQ broker: version, a confirmed round trip, and from the management API (when it
    /// answers) totals, permissions, postbox queues with their ready/unacked messages, the fullest ones
    /// and those declared with other arguments.
    /// Exit codes: 0 healthy, 1 other error, 2 unreachable, 3 access refused (credentials or vhost),
    /// 4 queue arguments differ, 5 permissions insufficient for Postbox's names (read from the
    /// management API; 5 wins over 4), 6 TLS with RabbitMQ failed (certificate not trusted or not for
    /// the host, not a TLS port, client certificate refused). Unusable TLS files are configuration
    /// errors (1), like any invalid setting.
    CheckRabbitmq {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Base URL of the RabbitMQ management HTTP API. Default: `http://<AMQP host>:15672`, or
        /// `https://<AMQP host>:15671` for an `amqps://` AMQP_URL (an https URL is verified with the
        /// same POSTBOX_AMQP_CA_FILE and client certificate as AMQP). It uses the AMQP_URL user and
        /// password unless this URL carries its own.
        #[arg(long, env = "POSTBOX_MANAGEMENT_URL", hide_env_values = true)]
        management_url: Option<String>,
        #[command(flatten)]
        config: Config,
    },
    /// Load-test a running Postbox (or, with `--mode raw`, RabbitMQ alone) and report sent, delivered,
    /// lost and duplicated messages, latency percentiles, rates, polls, and the server's CPU and peak
    /// RSS. It creates its own users through the admin API; never point it at production.
    /// See docs/BENCHMARKS.md.
    Loadtest {
        #[command(flatten)]
        args: Box<crate::loadtest::LoadtestArgs>,
    },
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve { config } => {
            crate::telemetry::init(config.log_json);
            let listener = tokio::net::TcpListener::bind(config.bind)
                .await
                .with_context(|| format!("cannot listen on {} (POSTBOX_BIND)", config.bind))?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            crate::run(config, listener, shutdown).await?;
            Ok(0)
        }
        Command::Migrate { config } => {
            config.validate()?;
            let conn = db::connect(&config.database_url, config.backend_timeout()).await?;
            db::migrate(&conn).await?;
            println!("migrations applied");
            Ok(0)
        }
        Command::CreateUser {
            username,
            display_name,
            college,
            role,
            config,
        } => {
            config.validate()?;
            let conn = db::connect(&config.database_url, config.backend_timeout()).await?;
            db::migrate(&conn).await?;
            let created = accounts::create_user(
                &conn,
                accounts::UserRequest {
                    username: &username,
                    display_name: display_name.as_deref(),
                    college_id: college,
                    role: Some(&role),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&created)?);
            Ok(0)
        }
        Command::Tokens { action } => tokens(action).await,
        Command::ServiceTokens { action } => service_tokens(action).await,
        Command::Openapi { output } => {
            let doc = crate::http::openapi_json();
            match output {
                Some(path) => std::fs::write(&path, doc)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{doc}"),
            }
            Ok(0)
        }
        Command::Loadtest { args } => crate::loadtest::main(*args).await,
        Command::CheckRabbitmq {
            json,
            management_url,
            config,
        } => {
            config.validate()?;
            // Only needed when the management API cannot list the postboxes.
            let users = match db::connect(&config.database_url, config.backend_timeout()).await {
                Ok(conn) => db::users::all_ids(&conn).await.ok(),
                Err(_) => None,
            };
            match check_rabbitmq::run(&config, management_url.as_deref(), users).await {
                Ok(report) => {
                    print_report(&report, json)?;
                    for problem in report.problems() {
                        eprintln!("error: {problem}");
                    }
                    Ok(report.exit_code())
                }
                Err(failure) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": false, "error": failure.to_string(), "exit_code": failure.exit_code()})
                        );
                    }
                    eprintln!("error: {failure}");
                    Ok(failure.exit_code())
                }
            }
        }
    }
}

fn print_report(report: &check_rabbitmq::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let or_unknown = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    println!(
        "RabbitMQ        {} {} at {}",
        report.product, report.version, report.url
    );
    match &report.tls {
        Some(t) => println!(
            "transport       TLS ({}: {}, {}); certificate verified against {}; client certificate {}",
            t.library,
            t.protocol,
            t.cipher,
            t.verified_with,
            if t.client_certificate {
                "presented"
            } else {
                "not configured"
            }
        ),
        None => {
            println!("transport       plain TCP, not encrypted (an amqps:// AMQP_URL uses TLS)")
        }
    }
    let m = &report.management;
    if m.reachable {
        let tags = if m.tags.is_empty() {
            "no tags".to_owned()
        } else {
            m.tags.join(", ")
        };
        println!(
            "management      {} (reachable, as {} [{tags}])",
            m.url,
            m.user.as_deref().unwrap_or("?")
        );
    } else {
        println!(
            "management      management API not reachable at {} ({}); {}",
            m.url,
            m.error.as_deref().unwrap_or("unknown error"),
            m.hint.as_deref().unwrap_or_default()
        );
    }
    if let Some(o) = &report.overview {
        let text = |s: &Option<String>| s.clone().unwrap_or_else(|| "?".into());
        println!(
            "versions        {} {}, Erlang {}, management plugin {}, cluster {}",
            o.product.as_deref().unwrap_or("RabbitMQ"),
            text(&o.rabbitmq_version),
            text(&o.erlang_version),
            text(&o.management_version),
            text(&o.cluster_name)
        );
        println!(
            "totals          {} queue(s), {} exchange(s), {} connection(s), {} channel(s), {} consumer(s), \
             {} message(s) ({} ready, {} unacked)",
            or_unknown(o.queues),
            or_unknown(o.exchanges),
            or_unknown(o.connections),
            or_unknown(o.channels),
            or_unknown(o.consumers),
            or_unknown(o.messages),
            or_unknown(o.messages_ready),
            or_unknown(o.messages_unacknowledged)
        );
    }
    if let Some(p) = &report.permissions {
        match (&p.configure, &p.write, &p.read) {
            (Some(c), Some(w), Some(r)) => println!(
                "permissions     {} on vhost {}: configure '{c}', write '{w}', read '{r}': {}",
                p.user, p.vhost, p.detail
            ),
            _ => println!(
                "permissions     {} on vhost {}: {}",
                p.user, p.vhost, p.detail
            ),
        }
    }
    let exchange_state = match report.exchange_present {
        Some(true) => "present",
        Some(false) => "was missing: declared by this check",
        None => "declared",
    };
    println!(
        "exchange        {} (durable topic; {exchange_state})",
        report.exchange
    );
    println!(
        "round trip      {:.2} ms (publish with confirm through the exchange + get, persistent)",
        report.round_trip_ms
    );
    let source = match report.queues_source {
        "management_api" => " (management API)",
        "amqp" => " (known users' postboxes, through AMQP)",
        _ => "",
    };
    match (report.postbox_queues, report.ready_messages) {
        (Some(q), Some(m)) => {
            println!("postboxes       {q} queue(s), {m} ready message(s){source}");
        }
        _ => println!("postboxes       not counted"),
    }
    match report.unacked_messages {
        Some(n) => println!("unacked         {n} message(s)"),
        None => println!("unacked         unknown (needs the management API)"),
    }
    match &report.fullest {
        None => println!("fullest         unknown (needs the management API)"),
        Some(queues) if queues.is_empty() => {
            println!("fullest         no postbox holds ready messages")
        }
        Some(queues) => {
            for q in queues {
                println!(
                    "fullest         {}: {} ready, {} unacked, {} consumer(s)",
                    q.queue, q.ready, q.unacked, q.consumers
                );
            }
        }
    }
    for q in &report.mismatches {
        println!(
            "MISMATCH        {} has other arguments than configured: {}",
            q.queue,
            q.differences.join("; ")
        );
    }
    for n in &report.notes {
        println!("note            {n}");
    }
    if report.exit_code() == 0 {
        println!("OK");
    }
    Ok(())
}

/// `postbox service-tokens ...`: tokens of host applications for the publish API.
#[derive(Debug, Subcommand)]
pub enum ServiceTokensAction {
    /// Create a token for a host application and print it (the key is shown once; only its digest is
    /// stored).
    Create {
        /// Who uses it (`erp`, `billing`): shown in listings and logs.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        config: Config,
    },
    /// List service tokens: id, name, prefix, creation and revocation (never the keys).
    List {
        #[command(flatten)]
        config: Config,
    },
    /// Revoke a token by `--id`, or every token of `--name`. Requests with it get 401 at once.
    Revoke {
        #[arg(long, required_unless_present = "name")]
        id: Option<i64>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        config: Config,
    },
}

async fn service_tokens(action: ServiceTokensAction) -> anyhow::Result<i32> {
    let config = match &action {
        ServiceTokensAction::Create { config, .. }
        | ServiceTokensAction::List { config }
        | ServiceTokensAction::Revoke { config, .. } => config,
    };
    config.validate()?;
    let conn = db::connect(&config.database_url, config.backend_timeout()).await?;
    db::migrate(&conn).await?;
    match &action {
        ServiceTokensAction::Create { name, .. } => {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 100 {
                anyhow::bail!("--name must be 1 to 100 characters");
            }
            let secret = crate::accounts::tokens::generate_service_token();
            let row = db::notifications::create_service_token(
                &conn,
                name,
                secret.key_hash,
                secret.prefix,
            )
            .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "id": row.id,
                    "name": row.name,
                    "token": secret.key,
                }))?
            );
        }
        ServiceTokensAction::List { .. } => {
            let rows: Vec<serde_json::Value> = db::notifications::service_tokens(&conn)
                .await?
                .into_iter()
                .map(|t| {
                    serde_json::json!({
                        "id": t.id,
                        "name": t.name,
                        "prefix": t.prefix,
                        "created_at": crate::events::rfc3339(t.created_at),
                        "revoked_at": t.revoked_at.map(crate::events::rfc3339),
                        "status": if t.revoked_at.is_some() { "revoked" } else { "live" },
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        ServiceTokensAction::Revoke { id, name, .. } => {
            let revoked =
                db::notifications::revoke_service_tokens(&conn, *id, name.as_deref()).await?;
            if revoked == 0 {
                eprintln!("no live service token matched");
                return Ok(1);
            }
            println!("revoked {revoked} service token(s)");
        }
    }
    Ok(0)
}

/// The longest token lifetime `tokens create --expires-in-days` takes (100 years); longer ones would
/// overflow the time arithmetic.
const MAX_TOKEN_DAYS: i64 = 36_500;

/// `postbox tokens ...`: list, create and revoke a user's API tokens.
#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// List a user's tokens: id, prefix, creation, expiry, revocation (never the keys themselves).
    List {
        #[arg(long)]
        username: String,
        #[command(flatten)]
        config: Config,
    },
    /// Create a token for a user and print it (the key is shown once).
    Create {
        #[arg(long)]
        username: String,
        /// Days until the token expires, 1 to 36 500 (default: it does not expire).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_TOKEN_DAYS))]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        config: Config,
    },
    /// Revoke one token (`--id`) or all of a user's tokens. Requests with them get 401 at once, and
    /// polls waiting with them in any running instance end at once with 401.
    Revoke {
        #[arg(long)]
        username: String,
        #[arg(long)]
        id: Option<i64>,
        #[command(flatten)]
        config: Config,
    },
}

async fn tokens(action: TokensAction) -> anyhow::Result<i32> {
    let (config, username) = match &action {
        TokensAction::List { config, username }
        | TokensAction::Create {
            config, username, ..
        }
        | TokensAction::Revoke {
            config, username, ..
        } => (config, username),
    };
    config.validate()?;
    let conn = db::connect(&config.database_url, config.backend_timeout()).await?;
    db::migrate(&conn).await?;
    let Some(user) = db::users::find_by_username(&conn, username).await? else {
        anyhow::bail!("no user named {username:?}");
    };
    let now = chrono::Utc::now();
    match action {
        TokensAction::List { .. } => {
            let rows: Vec<serde_json::Value> = db::users::tokens(&conn, user.id)
                .await?
                .into_iter()
                .map(|t| {
                    let status = if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "live"
                    };
                    serde_json::json!({
                        "id": t.id,
                        "prefix": t.prefix,
                        "created_at": crate::events::rfc3339(t.created_at),
                        "expires_at": t.expires_at.map(crate::events::rfc3339),
                        "revoked_at": t.revoked_at.map(crate::events::rfc3339),
                        "status": status,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        TokensAction::Create {
            expires_in_days, ..
        } => {
            let secret = crate::accounts::tokens::TokenSecret::generate();
            let expires_at = expires_in_days.map(|d| now + chrono::Duration::days(i64::from(d)));
            let row =
                db::users::insert_token(&conn, user.id, secret.key_hash, secret.prefix, expires_at)
                    .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "id": row.id,
                    "user_id": user.id,
                    "token": secret.key,
                    "expires_at": expires_at.map(crate::events::rfc3339),
                }))?
            );
        }
        TokensAction::Revoke { id, config, .. } => {
            let hashes = db::users::revoke_tokens(&conn, user.id, id).await?;
            // Tell running instances, so polls waiting with these tokens end now.
            let notified = if hashes.is_empty() {
                false
            } else {
                match crate::broker::Broker::connect(&config, CancellationToken::new()).await {
                    Ok(broker) => {
                        let sent = crate::broker::control::send(
                            &broker,
                            &crate::broker::control::Control::TokenRevoked {
                                key_hashes: hashes.clone(),
                            },
                        )
                        .await;
                        broker.close().await;
                        sent.is_ok()
                    }
                    Err(e) => {
                        eprintln!(
                            "note: RabbitMQ unreachable ({e}); running instances were not told: polls with these tokens may go on for up to 10 s, until each instance's revocation sweep reads them from the database; other requests are refused now"
                        );
                        false
                    }
                }
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "revoked": hashes.len(),
                    "running_instances_notified": notified,
                }))?
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }
}
