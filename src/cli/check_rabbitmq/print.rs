//! The report for a terminal (or, with `--json`, as JSON).

use super::Report;

/// Prints the report: one aligned line per finding, `OK` last when healthy.
pub fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
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
    match &report.parked_events {
        None => println!("outbox          unknown (the database could not be read)"),
        Some(p) if p.count == 0 => println!("outbox          no parked events"),
        Some(p) => println!(
            "outbox          {} parked event(s) (`postbox outbox list`); oldest last failed with: {}",
            p.count,
            p.oldest_error.as_deref().unwrap_or("unknown")
        ),
    }
    for n in &report.notes {
        println!("note            {n}");
    }
    if report.exit_code() == 0 {
        println!("OK");
    }
    Ok(())
}
