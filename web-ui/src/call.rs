//! Calls of the server's HTTP API as the logged-in user, and its answers as typed values.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Control;

/// The most of an API answer a page reads (a deployment of hundreds of machines fits).
const MAX_ANSWER: usize = 16 << 20;

/// An API call that did not succeed: its status and the API's message.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A request body: `body` as JSON (the API's types from `proto::api`).
pub(crate) fn json<B: serde::Serialize>(body: &B) -> String {
    serde_json::to_string(body).expect("the API's request types serialize")
}

fn request(method: Method, path: &str, body: Option<String>) -> Request<Body> {
    let b = Request::builder()
        .method(method)
        .uri(format!("/api/v1{path}"));
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v)),
        None => b.body(Body::empty()),
    }
    .expect("a request of a method, a path of ours and a body")
}

/// Calls the API; the answer's JSON (null when empty).
pub(crate) async fn api<C: Control>(
    c: &C,
    user: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Value, Refused> {
    let r = c.api(user, request(method, path, body)).await;
    let status = r.status();
    let bytes = match http_body_util::Limited::new(r.into_body(), MAX_ANSWER)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(Refused {
                status: StatusCode::BAD_GATEWAY,
                message: format!("reading the server's answer: {e}"),
            })
        }
    };
    let v: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes).chars().take(500).collect())
        })
    };
    if status.is_success() {
        Ok(v)
    } else {
        let message = v["error"]
            .as_str()
            .or(v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered {status}"));
        Err(Refused { status, message })
    }
}

/// Calls the API with GET and reads the answer as `T`.
pub(crate) async fn get<C: Control, T: DeserializeOwned>(
    c: &C,
    user: &str,
    path: &str,
) -> Result<T, Refused> {
    let v = api(c, user, Method::GET, path, None).await?;
    serde_json::from_value(v).map_err(|e| Refused {
        status: StatusCode::BAD_GATEWAY,
        message: format!("the server's answer to {path} is not what the dashboard reads: {e}"),
    })
}

/// The API's answer as it is (a stream of events).
pub(crate) async fn raw<C: Control>(c: &C, user: &str, path: &str) -> Response {
    c.api(user, request(Method::GET, path, None)).await
}
