//! The JavaScript client, served from the binary (`clients/js/` in the repository), so a page can
//! `import { PostboxClient } from '/static/postbox.js'` with no build step.

use axum::{http::header, response::IntoResponse};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

const CLIENT_JS: &str = include_str!("../../clients/js/postbox.js");
const CLIENT_DTS: &str = include_str!("../../clients/js/postbox.d.ts");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(client_js))
        .routes(routes!(client_types))
}

/// The JavaScript client (an ES module).
#[utoipa::path(get, path = "/static/postbox.js", tag = "clients",
    responses((status = 200, description = "ES module", content_type = "text/javascript", body = String)))]
async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CLIENT_JS,
    )
}

/// The client's TypeScript declarations.
#[utoipa::path(get, path = "/static/postbox.d.ts", tag = "clients",
    responses((status = 200, description = "TypeScript declarations", content_type = "application/typescript", body = String)))]
async fn client_types() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/typescript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CLIENT_DTS,
    )
}
