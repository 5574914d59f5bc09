//! The Postbox under test: the real binary, started, SIGKILLed and started again.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

pub struct Server {
    bin: String,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Server {
    pub fn new(bin: &str, port: u16, database_url: &str, amqp_url: &str, dir: &Path) -> Self {
        let env = [
            ("DATABASE_URL", database_url.to_owned()),
            ("AMQP_URL", amqp_url.to_owned()),
            ("POSTBOX_BIND", format!("127.0.0.1:{port}")),
            ("POSTBOX_DATA_DIR", dir.join("data").display().to_string()),
            (
                "POSTBOX_BROKER_PREFIX",
                format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            ),
            // The run overflows postboxes on purpose: no sender cap or rate limit in the way.
            ("POSTBOX_MAX_UNDELIVERED", "100000".to_owned()),
            ("POSTBOX_SEND_RATE", "100000".to_owned()),
            ("POSTBOX_BACKEND_TIMEOUT", "3".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        Server {
            bin: bin.to_owned(),
            port,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            child: None,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    async fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self
            .command()
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .await
            .with_context(|| format!("running {}", self.bin))?;
        if !out.status.success() {
            bail!("`postbox {}` failed: {}", args.join(" "), out.status);
        }
        serde_json::from_slice(&out.stdout).context("the CLI's JSON")
    }

    /// An admin token (the CLI migrates the database first).
    pub async fn create_admin(&self) -> anyhow::Result<String> {
        let name = format!(
            "chaos-admin-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let out = self
            .cli_json(&["create-user", "--username", &name, "--role", "admin"])
            .await?;
        Ok(out["token"].as_str().context("admin token")?.to_owned())
    }

    /// A service token for host publishes.
    pub async fn create_service_token(&self) -> anyhow::Result<String> {
        let out = self
            .cli_json(&["service-tokens", "create", "--name", "chaos"])
            .await?;
        Ok(out["key"]
            .as_str()
            .or(out["token"].as_str())
            .context("service key")?
            .to_owned())
    }

    /// Starts the service and waits until it answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let child = self
            .command()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Starts it if it is not running.
    pub async fn ensure_up(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            return self.start().await;
        }
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/communication/poll/test/",
            self.port
        );
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                // A start while RabbitMQ restarts may fail: start again.
                eprintln!("chaos: postbox exited ({status}); starting it again");
                self.child = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Box::pin(self.start()).await;
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("postbox did not answer on port {} within 60 s", self.port)
    }

    /// SIGKILL: no shutdown, nothing flushed.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
