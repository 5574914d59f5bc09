//! `postbox migrate`: apply pending database migrations and exit.

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<i32> {
    super::database(&config).await?;
    println!("migrations applied");
    Ok(0)
}
