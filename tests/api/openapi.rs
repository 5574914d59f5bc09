//! The API description: every documented operation exists, no route escapes the document, the
//! committed `docs/openapi.json` is what the binary serves, and the docs page works offline.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_documented_operation_is_routed_and_the_document_is_served() {
    let app = spawn_app().await;
    let served: Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&postbox::http::openapi_json()).unwrap()
    );
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{} paths", paths.len());
    for (path, item) in paths {
        let concrete = path.replace("{user_id}", "1").replace("{message_id}", "1");
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = app
                .client
                .request(m.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let is_json = resp.headers().get("content-type").is_some_and(|v| {
                v.to_str()
                    .unwrap_or_default()
                    .starts_with("application/json")
            });
            let body: Value = if is_json {
                resp.json().await.unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            // The fallbacks answer `no such endpoint` (404) and `method_not_allowed` (405); a routed
            // operation answers anything else (here mostly 401, since no token is sent).
            assert!(
                !(status == StatusCode::NOT_FOUND && body["detail"] == "no such endpoint")
                    && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed ({status})"
            );
            // Every operation documents the statuses it can answer, with the JSON error shape.
            let op = &item[method];
            assert!(
                op["responses"]
                    .as_object()
                    .unwrap()
                    .contains_key(status.as_str()),
                "{method} {path} answered undocumented {status}"
            );
        }
    }
    let security = served["components"]["securitySchemes"].as_object().unwrap();
    assert!(security.contains_key("token") && security.contains_key("token_query"));
}

#[test]
fn no_route_is_registered_outside_the_document() {
    // axum cannot list its routes, so the rule is enforced on the source: the HTTP layer registers
    // routes only through `utoipa_axum::routes!` (which documents them); the only plain routes are the
    // document and its docs page themselves, in docs.rs.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "docs.rs" {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for needle in [
            ".route(",
            ".route_service(",
            ".nest_service(",
            "routing::get",
            "routing::post",
        ] {
            assert!(
                !source.contains(needle),
                "{} registers a route outside the OpenAPI document ({needle})",
                path.display()
            );
        }
    }
}

/// Every operation has its own `operationId` (client generators name functions after them; the
/// OpenAPI validator refuses duplicates). `scripts/test.sh` also runs `openapi-spec-validator`.
#[test]
fn operation_ids_are_unique() {
    let doc: Value = serde_json::from_str(&postbox::http::openapi_json()).unwrap();
    let mut seen = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}"));
            if let Some(other) = seen.insert(id.to_owned(), format!("{method} {path}")) {
                panic!("operationId {id} is used by {other} and {method} {path}");
            }
        }
    }
}

/// The headers clients read on errors are described wherever the status is: `WWW-Authenticate` on
/// 401, `Retry-After` on 429 and 503.
#[test]
fn error_answers_describe_their_headers() {
    let doc: Value = serde_json::from_str(&postbox::http::openapi_json()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, header) in [
                ("401", "WWW-Authenticate"),
                ("429", "Retry-After"),
                ("503", "Retry-After"),
            ] {
                if let Some(response) = op["responses"].get(status) {
                    assert!(
                        response["headers"][header].is_object(),
                        "{method} {path} {status} does not describe {header}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 40, "{checked} error answers");
}

#[test]
fn committed_document_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json exists");
    assert!(
        committed == postbox::http::openapi_json(),
        "docs/openapi.json is stale: run `cargo run -- openapi --output docs/openapi.json`"
    );
}

#[tokio::test]
async fn docs_page_is_served_from_the_binary() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/api/docs/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/api/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        let body = resp.text().await.unwrap();
        assert!(body.len() > 100, "{asset} is empty");
        if asset == "swagger-initializer.js" {
            assert!(
                body.contains("/api/openapi.json"),
                "the page loads our document: {body}"
            );
        }
    }
}

#[tokio::test]
async fn the_javascript_client_is_served_from_the_binary() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/static/postbox.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = resp.text().await.unwrap();
    assert!(
        js.contains("export class PostboxClient"),
        "the ES module exports the client"
    );
    let resp = app
        .client
        .get(app.url("/static/postbox.d.ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("PostboxClient"));
}
