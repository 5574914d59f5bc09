//! `postbox create-user`: a user and their first API token, printed as JSON.

use crate::{accounts, config::Config};

/// The user to create, as the flags give it.
pub struct NewUser {
    pub username: String,
    pub display_name: Option<String>,
    pub college: Option<i64>,
    pub role: String,
}

pub async fn run(user: NewUser, config: Config) -> anyhow::Result<i32> {
    let conn = super::database(&config).await?;
    let created = accounts::create_user(
        &conn,
        accounts::UserRequest {
            username: &user.username,
            display_name: user.display_name.as_deref(),
            college_id: user.college,
            role: Some(&user.role),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string_pretty(&created)?);
    Ok(0)
}
