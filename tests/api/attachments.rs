//! Attachments: accepted and refused types (by content), the size limit, and downloads by participants
//! only.

use reqwest::{
    StatusCode,
    multipart::{Form, Part},
};
use serde_json::Value;

use crate::helpers::{TestApp, TestUser, assert_error, spawn_app_with};

/// A minimal valid PNG (1×1).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

async fn send_form(
    app: &TestApp,
    from: &TestUser,
    to: i64,
    text: Option<&str>,
    file: Option<(&'static str, Vec<u8>)>,
) -> reqwest::Response {
    let mut form = Form::new().text("receiver", to.to_string());
    if let Some(t) = text {
        form = form.text("message", t.to_owned());
    }
    if let Some((name, bytes)) = file {
        // The client's claimed type is ignored: detection is by content.
        form = form.part(
            "attachment",
            Part::bytes(bytes)
                .file_name(name)
                .mime_str("application/octet-stream")
                .unwrap(),
        );
    }
    app.client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", from.token))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn download(app: &TestApp, who: &TestUser, url: &str) -> reqwest::Response {
    app.client
        .get(app.url(url))
        .header("Authorization", format!("Token {}", who.token))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn images_and_documents_are_stored_and_served_to_participants_only() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let app = spawn_app_with(move |c| c.data_dir = dir).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mallory = app.member("mallory").await;

    // An image with no text: allowed because there is an attachment.
    let resp = send_form(
        &app,
        &alice,
        bob.id,
        None,
        Some(("photo.bin", PNG.to_vec())),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let m: Value = resp.json().await.unwrap();
    assert_eq!(m["attachment_type"], "image");
    assert_eq!(m["message"], "");
    let url = m["attachment"].as_str().unwrap().to_owned();
    assert_eq!(
        url,
        format!("/api/v1/communication/chats/attachments/{}/", m["id"])
    );

    // The receiver gets the event with the attachment, and downloads the same bytes.
    let events = app.collect_events(&bob, 1, 2).await;
    assert_eq!(events[0]["data"]["attachment"], url.as_str());
    assert_eq!(events[0]["data"]["attachment_type"], "image");
    for who in [&bob, &alice] {
        let r = download(&app, who, &url).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "image/png");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.bytes().await.unwrap().as_ref(), PNG);
    }
    // Nobody else can fetch it.
    assert_error(download(&app, &mallory, &url).await, StatusCode::NOT_FOUND).await;
    assert_error(
        download(
            &app,
            &bob,
            "/api/v1/communication/chats/attachments/999999/",
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        download(&app, &bob, "/api/v1/communication/chats/attachments/abc/").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let unauthenticated = app.client.get(app.url(&url)).send().await.unwrap();
    assert_error(unauthenticated, StatusCode::UNAUTHORIZED).await;

    // A PDF with a caption is a document, served as a download.
    let resp = send_form(
        &app,
        &bob,
        alice.id,
        Some("the schedule"),
        Some(("x.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".to_vec())),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let m: Value = resp.json().await.unwrap();
    assert_eq!(m["attachment_type"], "document");
    assert_eq!(m["message"], "the schedule");
    let r = download(&app, &alice, m["attachment"].as_str().unwrap()).await;
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );

    // A form without a file is a plain message.
    let resp = send_form(&app, &alice, bob.id, Some("just text"), None).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let m: Value = resp.json().await.unwrap();
    assert_eq!(m["attachment"], Value::Null);
}

#[tokio::test]
async fn refused_types_and_oversized_files_store_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let app = spawn_app_with(move |c| {
        c.data_dir = dir;
        c.max_attachment_bytes = 2048;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;

    let exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00".to_vec();
    let body = assert_error(
        send_form(
            &app,
            &alice,
            bob.id,
            Some("run me"),
            Some(("nice.pdf", exe)),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("images"));
    let elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    assert_error(
        send_form(&app, &alice, bob.id, None, Some(("a.jpg", elf))).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    let big = [PNG, &vec![0u8; 4096]].concat();
    assert_error(
        send_form(&app, &alice, bob.id, None, Some(("big.png", big))).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // Blank text and no file, and a missing receiver, are refused too.
    assert_error(
        send_form(&app, &alice, bob.id, Some("  "), None).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let no_receiver = app
        .client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", alice.token))
        .multipart(Form::new().text("message", "hi"))
        .send()
        .await
        .unwrap();
    assert_error(no_receiver, StatusCode::BAD_REQUEST).await;

    // Nothing reached bob, and nothing was written to disk.
    assert!(app.poll_events(&bob).await.is_empty());
    let stored = std::fs::read_dir(data.path().join("attachments"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn an_oversized_json_send_is_refused_without_reading_it_whole() {
    use futures_util::StreamExt;
    let app = spawn_app_with(|_| {}).await;
    let alice = app.member("alice").await;
    // More than the JSON limit, and a body that never ends: only a server that stops reading at the
    // limit can answer.
    let head = format!(
        "{{\"receiver\": 2, \"message\": \"{}",
        "x".repeat(app.config.max_body_bytes + 1024)
    );
    let endless = futures_util::stream::iter([Ok::<_, std::io::Error>(head.into_bytes())])
        .chain(futures_util::stream::pending());
    let send = app
        .client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", alice.token))
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(endless))
        .send();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send)
        .await
        .expect("the server answered before the body ended")
        .unwrap();
    let body = assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(body["error"], "payload_too_large");

    // Announced too large: refused from the header alone.
    let declared = app
        .client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", alice.token))
        .header("Content-Type", "application/json")
        .body(vec![b' '; app.config.max_body_bytes + 1])
        .send()
        .await
        .unwrap();
    assert_error(declared, StatusCode::PAYLOAD_TOO_LARGE).await;
}
