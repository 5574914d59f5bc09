//! The `postbox` command line, one file per command: [`serve`], [`migrate`], [`create_user`],
//! [`tokens`], [`service_tokens`], [`outbox`], [`openapi`], [`check_rabbitmq`]. The load generator is its own
//! binary, `postbox-loadtest` (`src/bin/postbox-loadtest/`).

pub mod check_rabbitmq;
pub mod create_user;
pub mod migrate;
pub mod openapi;
pub mod outbox;
pub mod serve;
pub mod service_tokens;
pub mod tokens;

use clap::{Parser, Subcommand};
use sea_orm::DatabaseConnection;

use crate::{config::Config, db};
use outbox::OutboxAction;
use service_tokens::ServiceTokensAction;
use tokens::TokensAction;

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
    /// List the events the outbox relay parked after they kept failing, and give them back to it.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
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
    /// the host, not a TLS port, client certificate refused), 7 the outbox holds events the relay parked
    /// (`postbox outbox list`). Unusable TLS files are configuration errors (1), like any invalid
    /// setting.
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
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve { config } => serve::run(config).await,
        Command::Migrate { config } => migrate::run(config).await,
        Command::CreateUser {
            username,
            display_name,
            college,
            role,
            config,
        } => {
            let user = create_user::NewUser {
                username,
                display_name,
                college,
                role,
            };
            create_user::run(user, config).await
        }
        Command::Tokens { action } => tokens::run(action).await,
        Command::ServiceTokens { action } => service_tokens::run(action).await,
        Command::Outbox { action } => outbox::run(action).await,
        Command::Openapi { output } => openapi::run(output.as_deref()),
        Command::CheckRabbitmq {
            json,
            management_url,
            config,
        } => check_rabbitmq::command(json, management_url.as_deref(), &config).await,
    }
}

/// The database of a command that reads or writes it: the configuration checked, named on standard
/// error, connected, migrated.
async fn database(config: &Config) -> anyhow::Result<DatabaseConnection> {
    config.validate()?;
    // Which file or server: a relative SQLite path depends on the directory the command runs in.
    eprintln!("database: {}", db::describe(&config.database_url));
    let conn = db::connect(&config.database_url, config.backend_timeout()).await?;
    db::migrate(&conn).await?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }
}
