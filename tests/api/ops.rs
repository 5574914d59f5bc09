//! Operations endpoints: liveness, readiness (with a broker outage), Prometheus metrics.

use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    faults::TcpProxy,
    helpers::{assert_error, spawn_app, spawn_app_with},
};

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_eq!(body["broker"], "ok");
}

#[tokio::test]
async fn readiness_fails_with_a_clear_body_while_the_broker_is_down() {
    let proxy = TcpProxy::start(5672).await;
    let app = spawn_app_with(|c| {
        c.amqp_url = proxy.amqp_url();
        c.backend_timeout_secs = 1;
    })
    .await;
    proxy.cut().await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body = assert_error(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"], "broker_unavailable");
    // Liveness does not depend on the backends.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    proxy.restore();
}

#[tokio::test]
async fn metrics_count_requests_publishes_and_polls() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "counted").await;
    assert_eq!(app.collect_events(&bob, 1, 2).await.len(), 1);
    // An event stream held open while the metrics are read.
    let stream = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}",
            bob.token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for name in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
        "postbox_http_requests_total{",
        "postbox_http_request_duration_seconds_bucket{",
        "postbox_events_published_total",
        "postbox_polls_in_flight",
        "postbox_poll_outcomes_total{outcome=\"events\"}",
        "postbox_delivery_latency_seconds_bucket",
        "postbox_queue_declare_cache_total{result=",
        "# HELP postbox_http_requests_total HTTP requests",
        "# HELP postbox_delivery_latency_seconds From an event's creation",
        "# HELP postbox_polls_in_flight ",
        concat!(
            "postbox_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
        "postbox_sse_streams_open ",
        "postbox_outbox_backlog ",
        "postbox_outbox_oldest_age_seconds ",
        "postbox_outbox_parked ",
        "postbox_broker_up 1",
        "postbox_broker_connections{state=\"open\"}",
        "postbox_db_pool_connections{state=\"idle\"}",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    // Routes are labelled by template, never by raw path (ids would explode the label set).
    assert!(text.contains("route=\"/api/v1/communication/chats/\""));
    assert!(!text.contains(&format!("conversation/{}", bob.id)));
    drop(stream);
}
