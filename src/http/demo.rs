//! The demo chat page (`clients/demo/` in the repository), compiled into the binary: `/demo/` with its
//! script and stylesheet, and `/` redirecting to it. Served only with `--demo` (`POSTBOX_DEMO`);
//! otherwise every path here answers the JSON 404. The routes always exist, so the OpenAPI document
//! is the same whatever the configuration. The page talks to the public API only; it holds no logic
//! of its own on the server side and must not grow any.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Redirect, Response},
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    http::error::{ApiError, ErrorBody},
    state::AppState,
};

const INDEX_HTML: &str = include_str!("../../clients/demo/index.html");
const DEMO_JS: &str = include_str!("../../clients/demo/demo.js");
const DEMO_CSS: &str = include_str!("../../clients/demo/demo.css");

/// The page loads its own files and the client from this origin and talks to this origin's API only;
/// attachments are shown from `blob:` URLs (they are fetched with the token in a header).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
                   media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Declares the `demo` tag (merged into the API's document with the routes).
#[derive(OpenApi)]
#[openapi(tags((name = "demo", description = "The demo chat page (only with `--demo`)")))]
struct DemoDoc;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(DemoDoc::openapi())
        .routes(routes!(demo_redirect))
        .routes(routes!(demo_page))
        .routes(routes!(demo_script))
        .routes(routes!(demo_stylesheet))
}

/// The 404 every demo path answers when the demo is off.
fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.config.demo {
        Ok(())
    } else {
        Err(ApiError::NotFound(
            "the demo page is off (start Postbox with --demo)".into(),
        ))
    }
}

/// A file of the page, never cached for long (the demo is for trying changes out).
fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Redirects to the demo page (with `--demo`).
#[utoipa::path(get, path = "/", tag = "demo",
    responses(
        (status = 303, description = "To `/demo/`"),
        (status = 404, description = "The demo is off", body = ErrorBody),
    ))]
async fn demo_redirect(State(state): State<AppState>) -> Result<Redirect, ApiError> {
    enabled(&state)?;
    Ok(Redirect::to("/demo/"))
}

/// The demo chat page (with `--demo`): log in with a token, conversations, live chat.
#[utoipa::path(get, path = "/demo/", tag = "demo",
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 404, description = "The demo is off", body = ErrorBody),
    ))]
async fn demo_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    let mut resp = file("text/html; charset=utf-8", INDEX_HTML);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    Ok(resp)
}

/// The demo page's script (an ES module that imports `/static/postbox.js`).
#[utoipa::path(get, path = "/demo/demo.js", tag = "demo",
    responses(
        (status = 200, description = "ES module", content_type = "text/javascript", body = String),
        (status = 404, description = "The demo is off", body = ErrorBody),
    ))]
async fn demo_script(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(file("text/javascript; charset=utf-8", DEMO_JS))
}

/// The demo page's stylesheet.
#[utoipa::path(get, path = "/demo/demo.css", tag = "demo",
    responses(
        (status = 200, description = "Stylesheet", content_type = "text/css", body = String),
        (status = 404, description = "The demo is off", body = ErrorBody),
    ))]
async fn demo_stylesheet(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(file("text/css; charset=utf-8", DEMO_CSS))
}
