//! `postbox tokens list|create|revoke`: a user's API tokens. A revocation is told to the running
//! instances over the control bus, so polls waiting with the token end at once.

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::{
    accounts::tokens::TokenSecret,
    broker::{
        Broker,
        control::{self, Control},
    },
    config::Config,
    db,
    events::rfc3339,
};

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

pub async fn run(action: TokensAction) -> anyhow::Result<i32> {
    let (config, username) = match &action {
        TokensAction::List { config, username }
        | TokensAction::Create {
            config, username, ..
        }
        | TokensAction::Revoke {
            config, username, ..
        } => (config, username),
    };
    let conn = super::database(config).await?;
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
                        "created_at": rfc3339(t.created_at),
                        "expires_at": t.expires_at.map(rfc3339),
                        "revoked_at": t.revoked_at.map(rfc3339),
                        "status": status,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        TokensAction::Create {
            expires_in_days, ..
        } => {
            let secret = TokenSecret::generate();
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
                    "expires_at": expires_at.map(rfc3339),
                }))?
            );
        }
        TokensAction::Revoke { id, config, .. } => {
            let hashes = db::users::revoke_tokens(&conn, user.id, id).await?;
            // Tell running instances, so polls waiting with these tokens end now.
            let notified = if hashes.is_empty() {
                false
            } else {
                match Broker::connect(&config, CancellationToken::new()).await {
                    Ok(broker) => {
                        let sent = control::send(
                            &broker,
                            &Control::TokenRevoked {
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
