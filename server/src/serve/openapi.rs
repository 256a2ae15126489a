//! The OpenAPI 3 document of the HTTP API (`GET /api/v1/openapi.json`), written by hand next
//! to the handlers it describes.

use axum::Json;
use serde_json::{json, Value};

/// The OpenAPI 3 description of this API.
pub(crate) async fn openapi() -> Json<Value> {
    let machine = json!({"$ref": "#/components/schemas/Machine"});
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mac_param = json!([{"name": "mac", "in": "path", "required": true, "schema": {"type": "string"}, "example": "aa:bb:cc:dd:ee:ff"}]);
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "drover", "version": env!("CARGO_PKG_VERSION"),
                 "description": "One disk image to a whole lab at once. Every path but /healthz, /metrics and this document needs `Authorization: Bearer TOKEN` (`drover token create NAME`)."},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Machine": {"type": "object", "properties": {
                    "mac": {"type": "string"}, "name": {"type": "string"}, "group": {"type": "string", "nullable": true},
                    "disk_serial": {"type": "string", "nullable": true}, "disk_size": {"type": "integer", "nullable": true},
                    "state": {"type": "string"}, "registered": {"type": "string", "enum": ["admin", "hello"]},
                    "last_seen_ms": {"type": "integer", "nullable": true}, "created_ms": {"type": "integer"}}},
                "Group": {"type": "object", "properties": {"name": {"type": "string"}, "machines": {"type": "integer"}, "created_ms": {"type": "integer"}}},
                "Image": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "version": {"type": "integer"},
                    "created": {"type": "integer"}, "size": {"type": "integer"}, "used_bytes": {"type": "integer"},
                    "stored_bytes": {"type": "integer"}, "chunks": {"type": "integer"}, "source": {"type": "string"}}}
            }
        },
        "security": [{"token": []}],
        "paths": {
            "/healthz": {"get": {"summary": "200 once the server is ready", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "database unavailable"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text format"}}}},
            "/api/v1/images": {"get": {"summary": "Image versions in the store", "responses": {"200": {"description": "images", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}}}}, "401": error}}},
            "/api/v1/machines": {
                "get": {"summary": "Machines (of one group with ?group=)", "parameters": [{"name": "group", "in": "query", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "machines", "content": {"application/json": {"schema": {"type": "array", "items": machine}}}}, "401": error}},
                "post": {"summary": "Add a machine", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["mac"], "properties": {"mac": {"type": "string"}, "name": {"type": "string"}, "group": {"type": "string"}}}}}},
                         "responses": {"201": {"description": "added", "content": {"application/json": {"schema": machine}}}, "400": error, "401": error, "409": error}}
            },
            "/api/v1/machines/{mac}": {
                "parameters": mac_param,
                "get": {"summary": "One machine", "responses": {"200": {"description": "the machine", "content": {"application/json": {"schema": machine}}}, "404": error}},
                "patch": {"summary": "Rename or regroup (group null: no group)", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"name": {"type": "string"}, "group": {"type": "string", "nullable": true}}}}}},
                          "responses": {"200": {"description": "changed", "content": {"application/json": {"schema": machine}}}, "400": error, "404": error}},
                "delete": {"summary": "Remove a machine", "responses": {"204": {"description": "removed"}, "404": error}}
            },
            "/api/v1/groups": {
                "get": {"summary": "Groups with their machine counts", "responses": {"200": {"description": "groups", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Group"}}}}}}},
                "post": {"summary": "Add a group", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}},
                         "responses": {"201": {"description": "added"}, "400": error, "409": error}}
            },
            "/api/v1/groups/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "delete": {"summary": "Remove a group (its machines stay, without a group)", "responses": {"204": {"description": "removed"}, "404": error}}
            },
            "/api/v1/wake": {"post": {"summary": "Send wake-on-LAN magic packets (to machines by MAC and/or a group's machines)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"macs": {"type": "array", "items": {"type": "string"}}, "group": {"type": "string"}}}}}},
                "responses": {"200": {"description": "sent", "content": {"application/json": {"schema": {"type": "object", "properties": {"woken": {"type": "array", "items": {"type": "string"}}, "to": {"type": "string"}}}}}}, "400": error, "404": error, "409": error}}},
            "/api/v1/audit": {"get": {"summary": "The audit log, newest first", "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}}], "responses": {"200": {"description": "entries"}}}}
        }
    }))
}
