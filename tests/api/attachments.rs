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

/// The names in the attachments folder (finished files and `.part` leftovers alike).
fn stored_files(app: &TestApp) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app.config.data_dir.join("attachments"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An app storing attachments in its own temporary folder, with `customise` applied after.
async fn app_with_own_folder(
    customise: impl FnOnce(&mut postbox::config::Config),
) -> (TestApp, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let app = spawn_app_with(move |c| {
        c.data_dir = dir;
        customise(c);
    })
    .await;
    (app, data)
}

#[tokio::test]
async fn a_refused_send_stores_no_file() {
    let (app, _data) = app_with_own_folder(|c| c.send_rate = 1).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let png = || Some(("p.png", PNG.to_vec()));

    let to_self = send_form(&app, &alice, alice.id, Some("me"), png()).await;
    assert_error(to_self, StatusCode::FORBIDDEN).await;
    let to_nobody = send_form(&app, &alice, 999_999, Some("hi"), png()).await;
    assert_error(to_nobody, StatusCode::NOT_FOUND).await;
    let long = "y".repeat(app.config.max_message_chars + 1);
    let too_long = send_form(&app, &alice, bob.id, Some(&long), png()).await;
    assert_error(too_long, StatusCode::BAD_REQUEST).await;
    assert_eq!(stored_files(&app), Vec::<String>::new());
    let control = send_form(&app, &alice, bob.id, Some("a\u{0}b"), png()).await;
    assert_error(control, StatusCode::BAD_REQUEST).await;
    assert_eq!(stored_files(&app), Vec::<String>::new());

    // Over the send rate (1 a second): a text send takes the second's only slot, the attachment after
    // it is refused. A slow machine may cross into the next second in between; the files stored must
    // then match the sends that were accepted, and one must be refused in the end.
    let (mut accepted, mut limited) = (0, false);
    for _ in 0..5 {
        app.send(&alice, bob.id, "text first").await;
        let resp = send_form(&app, &alice, bob.id, None, png()).await;
        match resp.status() {
            StatusCode::CREATED => accepted += 1,
            status => {
                let body = assert_error(resp, StatusCode::TOO_MANY_REQUESTS).await;
                assert_eq!(body["error"], "rate_limited", "{status}: {body}");
                limited = true;
                break;
            }
        }
    }
    assert!(limited, "the send rate was never reached");
    assert_eq!(stored_files(&app).len(), accepted);
}

#[tokio::test]
async fn a_send_refused_while_the_broker_is_down_stores_no_file() {
    let proxy = crate::faults::TcpProxy::start(5672).await;
    let amqp = proxy.amqp_url();
    let (app, _data) = app_with_own_folder(move |c| {
        c.amqp_url = amqp;
        c.backend_timeout_secs = 1;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    proxy.cut().await;
    // The first send may still go through (the outage is noticed by the publish); later ones are
    // refused before anything is stored.
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..4 {
        let resp = send_form(&app, &alice, bob.id, None, Some(("p.png", PNG.to_vec()))).await;
        match resp.status() {
            StatusCode::CREATED => accepted += 1,
            _ => {
                let body = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE).await;
                assert_eq!(body["error"], "broker_unavailable");
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 3,
        "sends must be refused while the broker is down"
    );
    assert_eq!(stored_files(&app).len(), accepted);
    proxy.restore();
}

#[tokio::test]
async fn a_send_whose_message_cannot_be_stored_leaves_no_file() {
    use sea_orm::ConnectionTrait;
    let (app, _data) = app_with_own_folder(|_| {}).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let ok = send_form(&app, &alice, bob.id, None, Some(("p.png", PNG.to_vec()))).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let kept = stored_files(&app);
    assert_eq!(kept.len(), 1);

    // Every check passes, the file is stored, and then the transaction fails (its outbox insert has
    // no table): the send fails and its file goes.
    app.db
        .execute_unprepared("ALTER TABLE outbox RENAME TO outbox_gone")
        .await
        .unwrap();
    let failed = send_form(&app, &alice, bob.id, None, Some(("p.png", PNG.to_vec()))).await;
    let body = assert_error(failed, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(body["error"], "internal_error");
    assert_eq!(stored_files(&app), kept);
    app.db
        .execute_unprepared("ALTER TABLE outbox_gone RENAME TO outbox")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_download_is_the_uploaded_file_byte_for_byte() {
    let (app, _data) = app_with_own_folder(|_| {}).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // Several megabytes, more than one read buffer: a PNG header, then noise.
    let mut file = PNG.to_vec();
    let mut x: u32 = 0x9E37_79B9;
    file.extend((0..3 * 1024 * 1024 + 17).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    let resp = send_form(&app, &alice, bob.id, None, Some(("big.png", file.clone()))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let m: Value = resp.json().await.unwrap();
    let r = download(&app, &bob, m["attachment"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(
        r.headers()["content-length"],
        file.len().to_string().as_str()
    );
    let got = r.bytes().await.unwrap();
    assert!(
        got.as_ref() == file.as_slice(),
        "the download differs from the upload"
    );
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

#[tokio::test]
async fn the_attachment_quota_answers_413_and_stores_nothing() {
    let file = [PNG, &[0u8; 1000]].concat();
    let quota = 2 * file.len() as u64 + 10;
    let (app, _data) = app_with_own_folder(move |c| c.attachment_quota_bytes = quota).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    for _ in 0..2 {
        let resp = send_form(&app, &alice, bob.id, None, Some(("f.png", file.clone()))).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    assert_eq!(
        postbox::db::chat::attachment_bytes(&app.db, alice.id)
            .await
            .unwrap(),
        2 * file.len() as i64,
        "each message records its attachment's size"
    );
    let over = send_form(
        &app,
        &alice,
        bob.id,
        Some("one more"),
        Some(("f.png", file.clone())),
    )
    .await;
    let body = assert_error(over, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("attachment quota of {quota} bytes exceeded")),
        "{body}"
    );
    assert_eq!(stored_files(&app).len(), 2);
    // Text still goes, and the quota is the sender's own.
    app.send_ok(&alice, bob.id, "text is not counted").await;
    let resp = send_form(&app, &bob, alice.id, None, Some(("f.png", file.clone()))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(stored_files(&app).len(), 3);
}

/// Marks a file as written `ago` ago.
fn age(path: &std::path::Path, ago: std::time::Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

/// Waits until `path` is gone (the sweep runs every 100 ms here), or fails after 10 s.
async fn wait_removed(path: &std::path::Path) {
    for _ in 0..200 {
        if !path.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} was not swept", path.display());
}

#[tokio::test]
async fn the_sweep_removes_old_files_no_message_refers_to_and_keeps_the_rest() {
    let (app, _data) = app_with_own_folder(|c| c.attachment_sweep_secs = 0.1).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let resp = send_form(&app, &alice, bob.id, None, Some(("p.png", PNG.to_vec()))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let m: Value = resp.json().await.unwrap();
    let dir = app.config.data_dir.join("attachments");
    let [referenced] = &stored_files(&app)[..] else {
        panic!("one file stored")
    };
    let referenced = dir.join(referenced);
    let hours = std::time::Duration::from_secs(2 * 3600);
    age(&referenced, hours);

    let name = || uuid::Uuid::new_v4().simple().to_string();
    let orphan = dir.join(format!("{}.png", name()));
    let part = dir.join(format!(".{}.pdf.part", name()));
    let fresh = dir.join(format!("{}.png", name()));
    let foreign = dir.join("README");
    for path in [&orphan, &part, &fresh, &foreign] {
        std::fs::write(path, PNG).unwrap();
    }
    for path in [&orphan, &part, &foreign] {
        age(path, hours);
    }
    wait_removed(&orphan).await;
    wait_removed(&part).await;
    // One more old orphan, written after the sweep that removed those listed the folder: once it is
    // gone too, that sweep has finished, and what it kept stays.
    let later = dir.join(format!("{}.pdf", name()));
    std::fs::write(&later, b"%PDF-1.4\n").unwrap();
    age(&later, hours);
    wait_removed(&later).await;
    assert!(
        referenced.exists(),
        "a file a message refers to was removed"
    );
    assert!(fresh.exists(), "a file within the grace period was removed");
    assert!(
        foreign.exists(),
        "a file the store did not make was removed"
    );
    let r = download(&app, &bob, m["attachment"].as_str().unwrap()).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), PNG);
}

#[tokio::test]
async fn uploads_held_in_memory_at_once_are_bounded() {
    use futures_util::StreamExt;
    let (app, _data) = app_with_own_folder(|c| {
        c.max_uploads = 1;
        c.backend_timeout_secs = 1;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // An upload that never ends holds the only turn.
    let endless = futures_util::stream::iter([Ok::<_, std::io::Error>(PNG.to_vec())])
        .chain(futures_util::stream::pending());
    let form = Form::new().text("receiver", bob.id.to_string()).part(
        "attachment",
        Part::stream(reqwest::Body::wrap_stream(endless)).file_name("slow.png"),
    );
    let slow = app
        .client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", alice.token))
        .multipart(form)
        .send();
    let slow = tokio::spawn(slow);
    // The next one waits its turn for the backend timeout, then is told to come back.
    let mut busy = None;
    for _ in 0..100 {
        let resp = send_form(&app, &bob, alice.id, None, Some(("p.png", PNG.to_vec()))).await;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            busy = Some(resp);
            break;
        }
        // The slow upload had not taken its turn yet: that send went through.
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let resp = busy.expect("a send waiting for an upload turn was refused");
    assert!(resp.headers().contains_key("retry-after"));
    let body = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"], "server_busy");
    // JSON sends hold no turn.
    app.send_ok(&bob, alice.id, "text goes through").await;
    // Once the slow upload is gone, its turn is free again.
    slow.abort();
    let resp = send_form(&app, &bob, alice.id, None, Some(("p.png", PNG.to_vec()))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}
