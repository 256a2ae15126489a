//! The OpenAPI 3.1 document of the HTTP API (`GET /api/v1/openapi.json`), generated: each
//! handler carries its path, parameters and answers (`#[utoipa::path]`), the router registers
//! handlers only through them (`utoipa_axum`), and every schema comes from the type the
//! handler sends or takes (`proto::api`'s derives). A route cannot be added without being in
//! the document, and a field added to a type is in it.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use proto::api;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::OpenApi;

/// What the document says of itself, its token scheme, and the schemas of types no handler
/// names directly.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "drover",
        description = "One disk image to a whole lab at once. Every path but the public ones \
            (security: none: /healthz, /metrics, this document, the agent's hello, torrent and \
            seed, the tracker, the boot files) needs `Authorization: Bearer TOKEN`: an admin's \
            token (`drover token create NAME`) or, on the agent's paths, its task token."
    ),
    security(("token" = [])),
    modifiers(&TokenScheme),
    components(schemas(api::Machine, api::Group, api::Task, api::Image, api::ErrorBody))
)]
struct Base;

/// The bearer-token security scheme the document's `security` names.
struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, doc: &mut Document) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The finished document: [`Base`] with the router's paths (`{*rest}` wildcards written as
/// the plain parameters OpenAPI knows).
pub(crate) fn finish(routes: Document) -> Document {
    let mut doc = Base::openapi().merge_from(routes);
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    doc
}

/// The finished document as JSON, made once when the router is built.
#[derive(Clone)]
pub(crate) struct DocumentJson(Arc<str>);

impl DocumentJson {
    pub(crate) fn new(doc: &Document) -> anyhow::Result<Self> {
        Ok(Self(serde_json::to_string(doc)?.into()))
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "server", security(()),
    summary = "This document (public)",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub(crate) async fn openapi(Extension(doc): Extension<DocumentJson>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The document as the server serves it.
    fn document() -> Value {
        let (_, routes) = crate::serve::web::api::documented(None).split_for_parts();
        serde_json::to_value(super::finish(routes)).unwrap()
    }

    /// The router takes routes only from handlers' `#[utoipa::path]` (`.routes(routes!(..))`):
    /// a plain `.route(` would be a path the document does not know.
    #[test]
    fn routes_are_registered_only_through_their_documented_handlers() {
        let src = include_str!("api.rs");
        for call in [".route(", ".route_service(", ".nest_service("] {
            assert!(
                !src.contains(call),
                "web/api.rs registers a route with {call}: use .routes(routes!(handler)) with a \
                 #[utoipa::path] on the handler"
            );
        }
        assert!(src.matches(".routes(routes!(").count() >= 35);
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let ops: usize = paths
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert!(ops >= 45, "{ops} operations");
        for p in [
            "/healthz",
            "/metrics",
            "/api/v1/openapi.json",
            "/api/v1/machines/{mac}",
            "/api/v1/agent/hello",
            "/api/v1/agent/session/{rest}",
            "/api/v1/agent/capture/chunks/{hash}",
            "/boot/{name}",
            "/boot/files/{path}",
            "/announce",
        ] {
            assert!(paths.contains_key(p), "{p} is not in {:?}", paths.keys());
        }
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            doc["components"]["securitySchemes"]["token"]["scheme"] == "bearer",
            "{}",
            doc["components"]
        );
    }

    /// Every operation has a summary, names its path parameters, and says whether it needs a
    /// token: the public ones are exactly these.
    #[test]
    fn every_operation_is_described_and_the_public_ones_are_named() {
        let doc = document();
        let mut public = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{method} {path}: no summary"
                );
                let named: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                for piece in path.split('/').filter(|p| p.starts_with('{')) {
                    let name = piece.trim_matches(|c| c == '{' || c == '}');
                    assert!(
                        named.contains(&name),
                        "{method} {path}: {name} not described"
                    );
                }
                if op.get("security").is_some() {
                    public.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        public.sort();
        assert_eq!(
            public,
            [
                "GET /announce",
                "GET /api/v1/agent/seed",
                "GET /api/v1/agent/torrent",
                "GET /api/v1/openapi.json",
                "GET /boot/files/{path}",
                "GET /boot/{name}",
                "GET /healthz",
                "GET /metrics",
                "GET /scrape",
                "POST /api/v1/agent/hello",
            ]
        );
    }

    /// Every `$ref` anywhere in `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_named_is_generated_from_its_type() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let mut named = Vec::new();
        refs(&doc, &mut named);
        assert!(named.len() > 30, "{named:?}");
        for r in &named {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} is not a schema reference"));
            assert!(schemas.get(name).is_some(), "{r} names no schema");
        }
        // The schema is the type: every field a Deployment serializes is a property of its
        // schema, and an enum lists its wire spellings.
        let props = &schemas["Deployment"]["properties"];
        for field in [
            "id",
            "kind",
            "transport",
            "fallback",
            "then_action",
            "owner",
            "tasks",
        ] {
            assert!(props.get(field).is_some(), "Deployment.{field}: {props}");
        }
        let transports: Vec<&str> = schemas["Transport"]["enum"]
            .as_array()
            .expect("Transport is an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let spelled: Vec<&str> = proto::api::Transport::ALL
            .iter()
            .map(|t| t.as_str())
            .collect();
        assert_eq!(transports, spelled);
        // A request body is its type: a machine's patch takes exactly its fields.
        let patch = &doc["paths"]["/api/v1/machines/{mac}"]["patch"]["requestBody"];
        assert_eq!(
            patch["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/MachinePatch"
        );
    }
}
