//! `postbox outbox list|retry`: the events the outbox relay parked after they kept failing (a postbox
//! declared with other arguments, a message RabbitMQ refused), and giving them back to the relay once
//! the cause is fixed.

use clap::Subcommand;

use crate::{config::Config, db};

/// Parked rows listed at most.
const LIST_LIMIT: u64 = 1000;

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List parked events (oldest first, at most 1 000) as JSON: id, audience, event id and type,
    /// attempts, when stored and parked, the last error.
    List {
        #[command(flatten)]
        config: Config,
    },
    /// Give parked events back to the relay (all, or `--id`), which publishes them within seconds.
    /// Fix the cause first (the last error says it), or they are parked again.
    Retry {
        #[arg(long)]
        id: Vec<i64>,
        #[command(flatten)]
        config: Config,
    },
}

pub async fn run(action: OutboxAction) -> anyhow::Result<i32> {
    match action {
        OutboxAction::List { config } => {
            let conn = super::database(&config).await?;
            let rows = db::outbox::parked(&conn, LIST_LIMIT).await?;
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutboxAction::Retry { id, config } => {
            let conn = super::database(&config).await?;
            let ids = (!id.is_empty()).then_some(id.as_slice());
            let n = db::outbox::unpark(&conn, ids).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "retried": n }))?
            );
        }
    }
    Ok(0)
}
