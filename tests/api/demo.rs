//! The demo chat page: served from the binary with `--demo`, the JSON 404 without it.

use reqwest::{StatusCode, redirect::Policy};
use serde_json::Value;

use crate::helpers::{spawn_app_with, test_config};

const PATHS: [&str; 4] = ["/", "/demo/", "/demo/demo.js", "/demo/demo.css"];

#[tokio::test]
async fn the_demo_page_is_served_when_enabled() {
    let app = spawn_app_with(|c| c.demo = true).await;

    let resp = app.client.get(app.url("/demo/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert!(header("content-security-policy").contains("script-src 'self'"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("/demo/demo.js"), "{html}");
    assert!(html.contains("data-testid=\"token-input\""), "{html}");

    let js = app
        .client
        .get(app.url("/demo/demo.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = js.text().await.unwrap();
    assert!(
        js.contains("from '/static/postbox.js'"),
        "the page uses the served client"
    );
    assert!(
        !js.contains("innerHTML"),
        "user text is never parsed as HTML"
    );

    let css = app
        .client
        .get(app.url("/demo/demo.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // `/` leads to the page.
    let no_redirects = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let root = no_redirects.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/demo/");
}

#[tokio::test]
async fn the_demo_page_answers_the_json_404_when_disabled() {
    assert!(!test_config().demo, "off by default");
    let app = spawn_app_with(|c| c.demo = false).await;
    for path in PATHS {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}: {body}");
        assert_eq!(body["status"], 404, "{path}: {body}");
    }
}
