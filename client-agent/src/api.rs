//! The agent's side of the server's API: JSON calls with the task token, and the three ways a
//! call fails (the server is away: retry; the task is over: stop; anything else: report).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The server cannot be reached or answered 5xx (but 507): try again later.
    #[error("the server is away: {0}")]
    Away(String),
    /// 410: the task ended (cancelled, or done already).
    #[error("{0}")]
    Over(String),
    /// Any other refusal (401, 403, 400, 404...).
    #[error("{0} (HTTP {1})")]
    Refused(String, u16),
    /// The server answered, but not in the shape of `proto::api` (another version?).
    #[error("{0}")]
    Malformed(String),
}

/// The server, as this agent talks to it.
#[derive(Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: Option<String>,
}

impl Api {
    pub(crate) fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            token: None,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Away(format!("{e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<proto::api::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        Err(match status.as_u16() {
            410 => CallError::Over(msg),
            // 507: the server's disk is full, which waiting does not mend.
            s if s >= 500 && s != 507 => CallError::Away(format!("{msg} (HTTP {s})")),
            s => CallError::Refused(msg, s),
        })
    }

    /// `GET` of one of `proto::api`'s replies.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let resp = self
            .send(self.client.get(format!("{}/api/v1{path}", self.base)))
            .await?;
        Self::answer(path, resp).await
    }

    /// `POST` of one of `proto::api`'s bodies, for one of its replies.
    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CallError::Malformed(format!("the body of {path}: {e}")))?;
        let resp = self
            .send(
                self.client
                    .post(format!("{}/api/v1{path}", self.base))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await?;
        Self::answer(path, resp).await
    }

    /// `PUT` of raw bytes (an uploaded chunk), for one of `proto::api`'s replies.
    pub(crate) async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, CallError> {
        let resp = self
            .send(
                self.client
                    .put(format!("{}/api/v1{path}", self.base))
                    .header("content-type", "application/zstd")
                    .body(body),
            )
            .await?;
        Self::answer(path, resp).await
    }

    /// A successful answer's JSON, as `T`.
    async fn answer<T: DeserializeOwned>(
        path: &str,
        resp: reqwest::Response,
    ) -> Result<T, CallError> {
        let body = resp
            .bytes()
            .await
            .map_err(|e| CallError::Away(format!("reading {path}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Malformed(format!("the server's answer to {path}: {e}")))
    }

    /// `GET` of raw bytes (a chunk, a torrent).
    pub(crate) async fn bytes(&self, path: &str) -> Result<Vec<u8>, CallError> {
        let resp = self
            .send(self.client.get(format!("{}/api/v1{path}", self.base)))
            .await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| CallError::Away(format!("reading {path}: {e}")))?
            .to_vec())
    }

    /// Calls `f` until it is not `Away`, waiting 1 s, 2 s, ... 15 s between tries, for at
    /// most `give_up` (forever if `None`).
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        what: &str,
        give_up: Option<Duration>,
        mut f: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let start = std::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        loop {
            match f().await {
                Err(CallError::Away(e)) => {
                    if give_up.is_some_and(|g| start.elapsed() >= g) {
                        return Err(CallError::Away(e));
                    }
                    tracing::warn!("{what}: the server is away ({e}); trying again in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(15));
                }
                r => return r,
            }
        }
    }
}
