//! The OpenAPI document of `/api/v1`: the handlers' `#[utoipa::path]` annotations (collected
//! by the router, so the document and the routes cannot disagree), plus what every operation
//! shares: the bearer security scheme and the error responses.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenrouter management API",
        description = "Keys, workspaces, balances and top-ups, providers, the model catalogue, \
                       routing rules and configurations, firewall rules, request logs, usage \
                       and routing previews. Every call needs `Authorization: Bearer <admin \
                       token>`; a gateway key (`sk-tr-…`) may read its own `/logs`, `/usage` \
                       and `/balance` and call `/topup` for itself only. The payment webhook \
                       (`/webhooks/stripe`) is authenticated by its signature instead. Errors \
                       are `{\"error\": {\"message\", \"type\", \"code\"}}`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags(
        (name = "keys", description = "Gateway keys"),
        (name = "workspaces", description = "Workspaces: groups of keys sharing limits and a \
            balance"),
        (name = "billing", description = "Balances, credit, top-ups and the payment webhook"),
        (name = "providers", description = "Upstream providers (credentials are never returned)"),
        (name = "models", description = "The model catalogue"),
        (name = "routing", description = "Routing rules and per-key routing configurations"),
        (name = "firewall", description = "Firewall rules and templates"),
        (name = "usage", description = "Request logs and usage (a gateway key sees its own)"),
        (name = "preview", description = "Routing decisions computed without calling a provider"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut Document) {
        let scheme = SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The admin token, or a gateway key (`sk-tr-…`) for its own logs, usage, \
                     balance and top-ups",
                ))
                .build(),
        );
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", scheme);
    }
}

/// The document the router adds the annotated paths to.
pub fn base() -> Document {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// Adds to every operation the error responses it can give (all in the error envelope).
/// Operations annotated `security()` (no bearer token: the payment webhook) get no 401/403.
pub fn complete(doc: &mut Document) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_params = path.contains('{');
        for (writes, op) in operations(item) {
            let has_body = op.request_body.is_some();
            let open = op.security.as_ref().is_some_and(Vec::is_empty);
            let mut errors = vec![
                ("400", "Invalid request (parameters or body)"),
                (
                    "500",
                    "Internal error (details are in the control plane log)",
                ),
            ];
            if !open {
                errors.push(("401", "Missing or invalid credentials"));
                errors.push(("403", "A gateway key may not do this"));
            }
            if has_params || writes {
                errors.push(("404", "Not found"));
            }
            if writes {
                errors.push(("409", "Conflicts with what exists (e.g. a name in use)"));
            }
            if has_body {
                errors.push(("413", "Request body too large"));
                if !open {
                    errors.push(("415", "Content-Type is not application/json"));
                }
            }
            for (code, description) in errors {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| error_response(description));
            }
        }
    }
}

/// Each operation of a path item, and whether it writes.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, item.get.as_mut()),
        (true, item.post.as_mut()),
        (true, item.put.as_mut()),
        (true, item.patch.as_mut()),
        (true, item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(writes, op)| op.map(|op| (writes, op)))
}

fn error_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".to_string(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("ErrorBody")))),
    );
    RefOr::T(response)
}
