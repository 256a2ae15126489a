//! The OpenAPI 3.1 document of the HTTP API (`GET /api/v1/openapi.json`). Its schemas are
//! generated from the types the handlers send and take (`proto::api`, through utoipa), so a
//! field added to a type is in the document; the paths, with their summaries, are written here
//! next to the handlers they describe, and tests check that every route the server registers is
//! in the document and every schema a path names exists.

use axum::Json;
use proto::api;
use serde_json::{json, Value};
use utoipa::OpenApi;

/// The types whose schemas the document carries (and every type they contain).
#[derive(OpenApi)]
#[openapi(components(schemas(
    api::Machine,
    api::Group,
    api::Task,
    api::Deployment,
    api::Image,
    api::ImageVerified,
    api::Schedule,
    api::ScheduleRun,
    api::ErrorBody,
    api::Hello,
    api::HelloReply,
    api::TaskReply,
    api::ProgressReport,
    api::ResultReport,
    api::StateReply,
    api::SeedReply,
    api::HaveRequest,
    api::HaveReply,
    api::ChunkStored,
    api::Committed,
    api::NewDeployment,
    api::NewCapture,
    api::NewSchedule,
    api::NewMachine,
    api::NewGroup,
    api::Wake,
    api::Woken,
)))]
struct Schemas;

/// `{"$ref": ...}` to the schema of `name`.
fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A JSON body of the schema `name`.
fn body(name: &str) -> Value {
    json!({"application/json": {"schema": schema(name)}})
}

/// A response: `description`, with a JSON body of the schema `name`.
fn answer(description: &str, name: &str) -> Value {
    json!({"description": description, "content": body(name)})
}

/// The OpenAPI 3.1 description of this API.
pub(crate) async fn openapi() -> Json<Value> {
    Json(document())
}

fn document() -> Value {
    let machine = schema("Machine");
    let error = answer("error", "ErrorBody");
    let deployment = schema("Deployment");
    let id_param =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let mac_param = json!([{"name": "mac", "in": "path", "required": true, "schema": {"type": "string"}, "example": "aa:bb:cc:dd:ee:ff"}]);
    let schemas = Schemas::openapi()
        .components
        .map(|c| serde_json::to_value(c.schemas).unwrap_or_default())
        .unwrap_or_default();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "drover", "version": env!("CARGO_PKG_VERSION"),
                 "description": "One disk image to a whole lab at once. Every path but /healthz, /metrics and this document needs `Authorization: Bearer TOKEN` (`drover token create NAME`)."},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"token": []}],
        "paths": {
            "/healthz": {"get": {"summary": "200 once the server is ready", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "database unavailable"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text format"}}}},
            "/api/v1/images": {"get": {"summary": "Image versions in the store", "responses": {"200": {"description": "images", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}}}}, "401": error}}},
            "/api/v1/images/{reference}/torrent": {"get": {"summary": "The image's .torrent (payload: its used extents, one file per extent named by its disk offset; announces to this server)",
                "parameters": [{"name": "reference", "in": "path", "required": true, "schema": {"type": "string"}, "description": "an image id (or its start), name or name@version"}],
                "responses": {"200": {"description": "the torrent", "content": {"application/x-bittorrent": {}}}, "401": error, "404": error}}},
            "/api/v1/images/{reference}/verify": {"post": {"summary": "Re-read, decompress and re-hash every chunk of the image in the store; list the bad ones",
                "parameters": [{"name": "reference", "in": "path", "required": true, "schema": {"type": "string"}, "description": "an image id (or its start), name or name@version"}],
                "responses": {"200": answer("what was found", "ImageVerified"), "401": error, "404": error}}},
            "/announce": {"get": {"summary": "BitTorrent tracker (BEP 3, compact peers) for the server's image torrents; public; answers bencoded", "security": [],
                "parameters": [{"name": "info_hash", "in": "query", "required": true, "schema": {"type": "string"}}, {"name": "peer_id", "in": "query", "required": true, "schema": {"type": "string"}},
                               {"name": "port", "in": "query", "required": true, "schema": {"type": "integer"}}, {"name": "left", "in": "query", "schema": {"type": "integer"}},
                               {"name": "event", "in": "query", "schema": {"type": "string", "enum": ["started", "completed", "stopped"]}}, {"name": "numwant", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "bencoded peers or failure reason", "content": {"text/plain": {}}}}}},
            "/scrape": {"get": {"summary": "BitTorrent tracker scrape (BEP 48): seeds and downloaders of each given torrent the server serves; public; answers bencoded", "security": [],
                "parameters": [{"name": "info_hash", "in": "query", "required": true, "schema": {"type": "string"}, "description": "20 bytes, percent-encoded; repeated for several torrents"}],
                "responses": {"200": {"description": "bencoded files dictionary or failure reason", "content": {"text/plain": {}}}}}},
            "/api/v1/machines": {
                "get": {"summary": "Machines (of one group with ?group=)", "parameters": [{"name": "group", "in": "query", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "machines", "content": {"application/json": {"schema": {"type": "array", "items": machine}}}}, "401": error}},
                "post": {"summary": "Add a machine", "requestBody": {"required": true, "content": body("NewMachine")},
                         "responses": {"201": {"description": "added", "content": {"application/json": {"schema": machine}}}, "400": error, "401": error, "409": error}}
            },
            "/api/v1/machines/{mac}": {
                "parameters": mac_param,
                "get": {"summary": "One machine", "responses": {"200": {"description": "the machine", "content": {"application/json": {"schema": machine}}}, "404": error}},
                "patch": {"summary": "Rename, regroup, reserve an address, pin the disk (null clears group, ip, disk)", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"name": {"type": "string"}, "group": {"type": ["string", "null"]}, "ip": {"type": ["string", "null"]}, "disk": {"type": ["string", "null"]}}}}}},
                          "responses": {"200": {"description": "changed", "content": {"application/json": {"schema": machine}}}, "400": error, "404": error, "409": error}},
                "delete": {"summary": "Remove a machine", "responses": {"204": {"description": "removed"}, "404": error}}
            },
            "/api/v1/groups": {
                "get": {"summary": "Groups with their machine counts", "responses": {"200": {"description": "groups", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Group"}}}}}}},
                "post": {"summary": "Add a group", "requestBody": {"required": true, "content": body("NewGroup")},
                         "responses": {"201": answer("added", "Group"), "400": error, "409": error}}
            },
            "/api/v1/groups/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "delete": {"summary": "Remove a group (its machines stay, without a group)", "responses": {"204": {"description": "removed"}, "404": error}}
            },
            "/api/v1/wake": {"post": {"summary": "Send wake-on-LAN magic packets (to machines by MAC and/or a group's machines)",
                "requestBody": {"required": true, "content": body("Wake")},
                "responses": {"200": answer("sent", "Woken"), "400": error, "404": error, "409": error}}},
            "/api/v1/audit": {"get": {"summary": "The audit log, newest first", "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}}], "responses": {"200": {"description": "entries"}}}},
            "/api/v1/deployments": {
                "get": {"summary": "Deployments, newest first, each with its tasks", "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                        "responses": {"200": {"description": "deployments", "content": {"application/json": {"schema": {"type": "array", "items": deployment}}}}}},
                "post": {"summary": "Deploy an image to machines (MAC) and groups",
                         "requestBody": {"required": true, "content": body("NewDeployment")},
                         "responses": {"201": {"description": "created", "content": {"application/json": {"schema": deployment}}}, "400": error, "404": error, "409": error}}
            },
            "/api/v1/deployments/{id}": {"parameters": id_param, "get": {"summary": "One deployment with every machine's progress, rate and ETA", "responses": {"200": {"description": "the deployment", "content": {"application/json": {"schema": deployment}}}, "404": error}}},
            "/api/v1/deployments/{id}/start": {"parameters": id_param, "post": {"summary": "Start a waiting multicast deployment's stream now", "responses": {"200": {"description": "starting"}, "404": error, "409": error}}},
            "/api/v1/deployments/{id}/cancel": {"parameters": id_param, "post": {"summary": "Cancel a deployment: its tasks end, its session stops", "responses": {"200": {"description": "cancelled"}, "404": error, "409": error}}},
            "/api/v1/deployments/{id}/events": {"parameters": id_param, "get": {"summary": "Server-sent events: `deployment` with the deployment (as GET) at once and at every change, until it is over", "responses": {"200": {"description": "text/event-stream"}}}},
            "/api/v1/agent/hello": {"post": {"summary": "An agent says hello (no login; only from the machine itself: the server's own host, an address its neighbour table or its DHCP maps to the MAC, or a network in agent_networks, else 403, audited): registers an unknown MAC, records the disk, answers with the machine's task and, to an agent without a valid task token, a new one (tokens handed out before keep working)",
                "security": [],
                "requestBody": {"required": true, "content": body("Hello")},
                "responses": {"200": answer("the machine, its task (or null), a token (when handed out), poll_ms", "HelloReply"), "400": error, "403": error}}},
            "/api/v1/agent/task": {"get": {"summary": "Agent: its task now (multicast session, if one is live)", "responses": {"200": answer("task", "TaskReply"), "401": error, "403": error, "410": error}}},
            "/api/v1/agent/manifest": {"get": {"summary": "Agent: its task's image manifest", "responses": {"200": {"description": "{id, manifest}"}, "410": error}}},
            "/api/v1/agent/progress": {"post": {"summary": "Agent: progress (state receiving|verifying, bytes_done, rate_bps, chunk counts)", "requestBody": {"required": true, "content": body("ProgressReport")},
                "responses": {"200": answer("recorded", "StateReply"), "400": error, "410": error}}},
            "/api/v1/agent/result": {"post": {"summary": "Agent: the task's end ({ok, reason, bytes_done, chunk counts})", "requestBody": {"required": true, "content": body("ResultReport")},
                "responses": {"200": answer("recorded", "StateReply"), "400": error, "410": error}}},
            "/api/v1/agent/torrent": {"get": {"summary": "Agent: its task's image torrent, seeded by the server (503 while it is being built: ask again); takes the task token after the task is over (a finished machine seeds)", "security": [],
                "responses": {"200": {"description": "application/x-bittorrent"}, "401": error, "503": error}}},
            "/api/v1/agent/seed": {"get": {"summary": "Agent, after its task: whether to keep seeding (while its deployment runs); takes the task token after the task is over", "security": [],
                "responses": {"200": answer("whether to seed", "SeedReply"), "401": error}}},
            "/api/v1/chunks/{hash}": {"parameters": [{"name": "hash", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "Agent: one chunk of its task's image by BLAKE3 hash (a zstd frame)", "responses": {"200": {"description": "application/zstd"}, "404": error, "410": error}}}
        }
    });
    doc["paths"]["/api/v1/schedules"] = schedules(&error);
    doc["paths"]["/api/v1/captures"] = json!({"post": {
        "summary": "Capture a machine's disk over the network: gives it a capture task (a deployment of kind capture); its agent uploads the chunks the server lacks and commits the image",
        "requestBody": {"required": true, "content": body("NewCapture")},
        "responses": {"201": {"description": "the capture deployment", "content": {"application/json": {"schema": deployment}}}, "400": error, "404": error, "409": error}}});
    doc["paths"]["/api/v1/agent/capture/have"] = json!({"post": {
        "summary": "Agent (capture): which of these chunk hashes the server lacks",
        "requestBody": {"required": true, "content": body("HaveRequest")},
        "responses": {"200": answer("the hashes the server lacks", "HaveReply"), "400": error, "403": error, "410": error}}});
    doc["paths"]["/api/v1/agent/capture/chunks/{hash}"] = json!({
        "parameters": [{"name": "hash", "in": "path", "required": true, "schema": {"type": "string"}},
                       {"name": "len", "in": "query", "required": true, "schema": {"type": "integer"}, "description": "plaintext bytes"}],
        "put": {"summary": "Agent (capture): one chunk as a zstd frame; kept only if it decompresses to len bytes hashing to hash",
            "requestBody": {"required": true, "content": {"application/zstd": {}}},
            "responses": {"200": answer("already stored", "ChunkStored"), "201": answer("stored", "ChunkStored"), "400": error, "403": error, "410": error, "507": error}}});
    doc["paths"]["/api/v1/agent/capture/commit"] = json!({"post": {
        "summary": "Agent (capture): the manifest, last; commits the image once every chunk it names is stored (a repeat answers with the same image)",
        "requestBody": {"required": true, "content": {"application/json": {}}},
        "responses": {"200": answer("the image", "Committed"), "400": error, "409": error, "410": error}}});
    doc["paths"]["/api/v1/schedules/{name}"] = json!({
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "name or id"}],
        "get": {"summary": "One schedule with its next due time and its runs (newest first)", "responses": {"200": answer("the schedule", "Schedule"), "404": error}},
        "put": {"summary": "Replace a schedule (checked as a new one); it fires from now on by its new timing", "requestBody": {"required": true, "content": body("NewSchedule")},
            "responses": {"200": answer("the schedule", "Schedule"), "400": error, "404": error, "409": error}},
        "delete": {"summary": "Remove a schedule (a deployment it created goes on)", "responses": {"204": {"description": "removed"}, "404": error}}
    });
    doc["paths"]["/api/v1/openapi.json"] = json!({"get": {"summary": "This document (public)", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1"}}}});
    doc["paths"]["/api/v1/agent/session"] = json!({"get": {
        "summary": "Agent: its deployment's live multicast session's description (chunks, their hashes); the session opens no port of its own",
        "responses": {"200": {"description": "the session description"}, "401": error, "410": error}}});
    doc["paths"]["/api/v1/agent/session/{rest}"] = json!({
        "parameters": [{"name": "rest", "in": "path", "required": true, "schema": {"type": "string", "enum": ["session", "register", "chunks/{i}"]}}],
        "get": {"summary": "Agent: the session's description (session) or one chunk by index (chunks/{i})", "responses": {"200": {"description": "JSON or a zstd frame"}, "401": error, "404": error, "410": error}},
        "post": {"summary": "Agent: registers with the session (register): a receiver id and the session's datagram key", "responses": {"200": {"description": "{receiver_id, key}"}, "401": error, "410": error}}});
    doc["paths"]["/boot/{mac}.ipxe"] = json!({
        "parameters": [{"name": "mac", "in": "path", "required": true, "schema": {"type": "string"}}],
        "get": {"summary": "iPXE's boot script (no login; a task's script only to the machine itself, as hello): the agent's kernel and initramfs for a machine with a pending task (a fresh task token on the command line), else the local disk", "security": [],
            "responses": {"200": {"description": "text/plain iPXE script"}, "400": error}}});
    doc["paths"]["/boot/files/{path}"] = json!({
        "parameters": [{"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}],
        "get": {"summary": "A file of the boot directory (public; nothing outside it)", "security": [],
            "responses": {"200": {"description": "the file"}, "403": error, "404": error}}});
    doc
}

fn schedules(error: &Value) -> Value {
    json!({
        "get": {"summary": "Schedules with their next due and fire times and newest runs", "responses": {"200": {"description": "schedules", "content": {"application/json": {"schema": {"type": "array", "items": schema("Schedule")}}}}}},
        "post": {"summary": "Add a schedule: a redeploy (image) or a wake-up, at cron times (server local time) or once. A redeploy fires its wake lead before its due time: it creates the deployment (its multicast stream starts at the due time) and wakes the machines.",
            "requestBody": {"required": true, "content": body("NewSchedule")},
            "responses": {"201": answer("added", "Schedule"), "400": error, "404": error, "409": error}}
    })
}

#[cfg(test)]
mod tests {
    /// Every route the server registers (read from the routers' source), as the document
    /// names it: `/api/v1` added to the nested ones, `{*rest}` written `{rest}`.
    fn routes() -> Vec<String> {
        let src = include_str!("api.rs");
        let mut out = Vec::new();
        for piece in src.split(".route(").skip(1) {
            let Some(path) = piece
                .trim_start()
                .strip_prefix('"')
                .and_then(|p| p.split('"').next())
            else {
                continue;
            };
            // `/boot/{name}` serves `MAC.ipxe`: the document names it so.
            let path = path
                .replace("{*", "{")
                .replace("/boot/{name}", "/boot/{mac}.ipxe");
            let top = [
                "/api/v1/",
                "/boot",
                "/announce",
                "/scrape",
                "/healthz",
                "/metrics",
            ];
            out.push(if top.iter().any(|t| path.starts_with(t)) {
                path
            } else {
                format!("/api/v1{path}")
            });
        }
        out
    }

    #[test]
    fn every_route_is_in_the_document() {
        let doc = super::document();
        let routes = routes();
        assert!(routes.len() > 30, "{routes:?}");
        let missing: Vec<&String> = routes
            .iter()
            .filter(|r| doc["paths"].get(r.as_str()).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}"
        );
    }

    /// Every `$ref` anywhere in `v`.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_named_is_generated_from_its_type() {
        let doc = super::document();
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
    }
}
