//! The API's description: the OpenAPI document (generated from the handlers' `#[utoipa::path]`
//! annotations), served at `/api/openapi.json`, and a Swagger UI at `/api/docs` whose assets are compiled
//! into the binary (no download at build or run time).

use axum::Router;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{http::error::ErrorBody, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postbox",
        description = "Real-time chat over plain HTTP: durable per-user RabbitMQ postboxes and a push-based long poll. \
Every error answers the JSON shape `ErrorBody`.",
        license(name = "MIT")
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "poll", description = "Receiving events: the long poll"),
        (name = "chats", description = "One-to-one chat"),
        (name = "notifications", description = "Stored notifications to a user or a whole college"),
        (name = "publish", description = "Events from host applications (service tokens)"),
        (name = "support", description = "The support desk: one chat per user with the support agents (staff and admins)"),
        (name = "admin", description = "Provisioning (admin tokens only)"),
        (name = "ops", description = "Health, readiness and metrics"),
        (name = "clients", description = "The JavaScript client, served from the binary")
    )
)]
pub struct ApiDoc;

/// The two ways to send a user token: `Authorization: Token <key>` and `?token=<key>`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "A user's API token as `Token <key>` (or `Bearer <key>`).",
            ))),
        );
        components.add_security_scheme(
            "token_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same token as a query parameter, for EventSource and sendBeacon.",
            ))),
        );
    }
}

/// Describes the headers an error answer carries, on every operation that documents the status:
/// `WWW-Authenticate` on 401, `Retry-After` on 429 and 503 (clients read them to wait and to ask for a
/// token). The headers are set in one place (`http::error`), so they are described in one place too.
pub fn error_headers(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        RefOr,
        header::HeaderBuilder,
        schema::{ObjectBuilder, Type},
    };
    let header = |ty: Type, description: &str| {
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(ty)))
                .description(Some(description))
                .build(),
        )
    };
    for item in openapi.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                match status.as_str() {
                    "401" => {
                        response.headers.insert(
                            "WWW-Authenticate".into(),
                            header(
                                Type::String,
                                "`Token`: send the token as `Authorization: Token <key>`",
                            ),
                        );
                    }
                    "429" | "503" => {
                        response.headers.insert(
                            "Retry-After".into(),
                            header(
                                Type::Integer,
                                "Seconds to wait before retrying (always on 429; on 503 when Postbox knows)",
                            ),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `/api/openapi.json` and the Swagger UI at `/api/docs`.
pub fn router(openapi: utoipa::openapi::OpenApi) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", openapi))
}

/// Implements `ToSchema` for a type from a literal JSON Schema, for constraints the derive cannot say
/// (one-of-several required fields, numbers-or-numeric-strings). The handler enforces exactly this.
macro_rules! literal_schema {
    ($ty:ty, $name:literal, $schema:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::RefOr::T(
                    serde_json::from_value($schema).expect("literal schemas are valid"),
                )
            }
        }
        impl utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}
pub(crate) use literal_schema;

pub use crate::validate::MAX_ID;

/// A positive id as a JSON number or a numeric string (DRF clients send either).
pub fn id_schema() -> serde_json::Value {
    serde_json::json!({
        "oneOf": [
            {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID},
            {"type": "string", "pattern": "^[1-9][0-9]{0,14}$"}
        ],
        "description": "A positive id, as a number or a numeric string"
    })
}

/// A schema that also accepts `null` (optional fields clients may send as null).
pub fn nullable(schema: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"oneOf": [schema, {"type": "null"}]})
}
