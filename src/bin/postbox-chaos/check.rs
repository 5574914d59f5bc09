//! The checker: from the database and what every client saw.

use std::{collections::HashSet, sync::atomic::Ordering};

use sea_orm::{EntityTrait, QuerySelect};

use crate::{Counters, Run, clients::Client};

pub struct Report {
    pub events: usize,
    pub deliveries: u64,
    pub seen_twice: u64,
    pub filled: u64,
    pub covered_by_reload: u64,
    pub silent_losses: Vec<String>,
    pub other_ids: Vec<String>,
    pub phantoms: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.silent_losses.is_empty() && self.other_ids.is_empty() && self.phantoms.is_empty()
    }

    pub fn print(&self, c: &Counters) {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        println!("chaos: acknowledged events           {}", self.events);
        println!("chaos: refused (not acknowledged)    {}", n(&c.refused));
        println!("chaos: deliveries checked            {}", self.deliveries);
        println!(
            "chaos: faults                        {} SIGKILLs, {} broker restarts, {} overflows, {} stale polls, {} cut connections",
            n(&c.kills),
            n(&c.broker_restarts),
            n(&c.overflows),
            n(&c.stale_polls),
            n(&c.cuts)
        );
        println!("chaos: filled from poll/missed       {}", self.filled);
        println!(
            "chaos: announced (resync, reload)    {}",
            self.covered_by_reload
        );
        println!("chaos: duplicates (same id)          {}", self.seen_twice);
        println!(
            "chaos: duplicates under another id   {}",
            self.other_ids.len()
        );
        println!(
            "chaos: events for data not stored    {}",
            self.phantoms.len()
        );
        println!(
            "chaos: silent losses                 {}",
            self.silent_losses.len()
        );
        for line in self
            .silent_losses
            .iter()
            .chain(&self.other_ids)
            .chain(&self.phantoms)
            .take(20)
        {
            println!("chaos:   {line}");
        }
        println!("chaos: {}", if self.ok() { "OK" } else { "FAILED" });
    }
}

pub async fn check(run: &Run, clients: &[Client], database_url: &str) -> anyhow::Result<Report> {
    let acked = run.acked.lock().unwrap().clone();
    let mut report = Report {
        events: acked.len(),
        deliveries: 0,
        seen_twice: 0,
        filled: 0,
        covered_by_reload: 0,
        silent_losses: Vec::new(),
        other_ids: Vec::new(),
        phantoms: Vec::new(),
    };
    for client in clients {
        let seen = client.seen.lock().unwrap();
        report.filled += seen.filled;
        report.seen_twice += seen
            .ids
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum::<u64>();
        for a in acked.iter().filter(|a| a.user == client.user.id) {
            report.deliveries += 1;
            match seen.keys.get(&a.key) {
                Some(ids) if ids.len() == 1 => {}
                Some(ids) => report.other_ids.push(format!(
                    "{} got {} under {} ids: {ids:?}",
                    client.name(),
                    a.key,
                    ids.len()
                )),
                // Told of a gap after it was acknowledged: covered (the client reloads).
                None if seen.reloads.iter().any(|&t| t >= a.at) => report.covered_by_reload += 1,
                None => report.silent_losses.push(format!(
                    "{} never got {} (nor a resync after it)",
                    client.name(),
                    a.key
                )),
            }
        }
    }

    // Every message and notification a client saw is stored.
    let db = postbox::db::connect(database_url, std::time::Duration::from_secs(10)).await?;
    let messages: HashSet<i64> = postbox::db::entities::chat_message::Entity::find()
        .select_only()
        .column(postbox::db::entities::chat_message::Column::Id)
        .into_tuple()
        .all(&db)
        .await?
        .into_iter()
        .collect();
    let notifications: HashSet<i64> = postbox::db::entities::notification::Entity::find()
        .select_only()
        .column(postbox::db::entities::notification::Column::Id)
        .into_tuple()
        .all(&db)
        .await?
        .into_iter()
        .collect();
    for client in clients {
        let seen = client.seen.lock().unwrap();
        for key in seen.keys.keys() {
            let stored = match key.split_once(':') {
                Some(("m", id)) => id.parse().is_ok_and(|id| messages.contains(&id)),
                Some(("n", id)) => id.parse().is_ok_and(|id| notifications.contains(&id)),
                _ => true,
            };
            if !stored {
                report
                    .phantoms
                    .push(format!("{} got {key}, which is not stored", client.name()));
            }
        }
    }
    if !report.silent_losses.is_empty() {
        explain(&db, &acked, clients, &report).await;
    }
    Ok(report)
}

/// What the database and the clients say of the first losses: stored? numbered? left in the outbox?
async fn explain(
    db: &sea_orm::DatabaseConnection,
    acked: &[crate::Acked],
    clients: &[Client],
    report: &Report,
) {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = db.get_database_backend();
    let mut keys: Vec<&crate::Acked> = acked
        .iter()
        .filter(|a| {
            report
                .silent_losses
                .iter()
                .any(|l| l.contains(&format!(" {} ", a.key)))
        })
        .collect();
    keys.truncate(5);
    for a in keys {
        let Some(id) = a.key.strip_prefix("m:") else {
            println!("chaos: lost {} (user {})", a.key, a.user);
            continue;
        };
        let query = |sql: String| Statement::from_string(backend, sql);
        let stored = db
            .query_one_raw(query(format!(
                "SELECT id FROM chat_messages WHERE id = {id}"
            )))
            .await
            .ok()
            .flatten()
            .is_some();
        let seq: Option<i64> = db
            .query_one_raw(query(format!(
                "SELECT seq FROM user_events WHERE user_id = {} AND payload LIKE '%\"data\":{{\"id\":{id},%'",
                a.user
            )))
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<i64>("", "seq").ok());
        let outbox: i64 = db
            .query_one_raw(query(format!(
                "SELECT COUNT(*) AS n FROM outbox WHERE payload LIKE '%\"data\":{{\"id\":{id},%'"
            )))
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<i64>("", "n").ok())
            .unwrap_or(-1);
        println!(
            "chaos: lost {} to user {}: stored {stored}, seq {seq:?}, outbox rows {outbox}, acknowledged {:?} before the end",
            a.key,
            a.user,
            a.at.elapsed()
        );
        for c in clients.iter().filter(|c| c.user.id == a.user) {
            let seen = c.seen.lock().unwrap();
            println!(
                "chaos:   {}: last_seq {:?}, {} ahead{}",
                c.name(),
                seen.last_seq,
                seen.ahead.len(),
                seq.map_or(String::new(), |n| format!(
                    ", number {n} seen: {}",
                    seen.seqs.contains(&n)
                ))
            );
        }
    }
}
