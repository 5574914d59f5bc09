//! `postbox service-tokens create|list|revoke`: the tokens host applications use for the publish API.

use clap::Subcommand;

use crate::{accounts::tokens::generate_service_token, config::Config, db, events::rfc3339};

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

pub async fn run(action: ServiceTokensAction) -> anyhow::Result<i32> {
    let config = match &action {
        ServiceTokensAction::Create { config, .. }
        | ServiceTokensAction::List { config }
        | ServiceTokensAction::Revoke { config, .. } => config,
    };
    let conn = super::database(config).await?;
    match &action {
        ServiceTokensAction::Create { name, .. } => {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 100 {
                anyhow::bail!("--name must be 1 to 100 characters");
            }
            let secret = generate_service_token();
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
                        "created_at": rfc3339(t.created_at),
                        "revoked_at": t.revoked_at.map(rfc3339),
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
