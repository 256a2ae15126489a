//! The HTTP API under `/api/v1` (JSON, bearer-token auth), plus `/healthz`, `/metrics` and the
//! OpenAPI document. Handlers are thin: the database and the image store do the work.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use proto::api::ErrorBody;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::serve::db::{Db, DbError};
use crate::serve::inventory::mac::Mac;

/// What every handler shares: the features' services, and the database for what is
/// everyone's (tokens, users, the audit log).
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) started: Instant,
    pub(crate) inventory: crate::serve::inventory::service::Inventory,
    pub(crate) images: crate::serve::store::service::Images,
    pub(crate) deployer: Arc<crate::serve::deployments::service::Deployer>,
    pub(crate) scheduler: crate::serve::schedules::service::Scheduler,
    pub(crate) boot: crate::serve::boot::ipxe::BootEnv,
    pub(crate) waker: Arc<crate::serve::boot::wol::Waker>,
    /// The BitTorrent tracker of the image torrents.
    pub(crate) tracker: Arc<crate::serve::swarm::tracker::Tracker>,
    /// The lab interface's address: where the server's seed is announced when a request's
    /// Host header does not say.
    pub(crate) lab_addr: Option<std::net::Ipv4Addr>,
    /// Routed networks whose machines are trusted to name their own MAC
    /// ([`crate::serve::auth::caller`]).
    pub(crate) agent_networks: Vec<ipnet::IpNet>,
}

pub(crate) type Shared = Arc<AppState>;

/// An API error: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    pub(crate) fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }

    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }

    /// What went wrong, in words.
    pub(crate) fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(_) => Self(StatusCode::NOT_FOUND, e.to_string()),
            DbError::Exists(_) | DbError::Unavailable(_) => {
                Self(StatusCode::CONFLICT, e.to_string())
            }
            DbError::Invalid(_) => Self::bad_request(e.to_string()),
            DbError::Other(e) => e.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "request failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::bad_request(format!("malformed request body: {}", e.body_text()))
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Who made an admin request (`token:NAME`), for the audit log.
#[derive(Clone)]
pub(crate) struct Actor(pub(crate) String);

pub(crate) fn parse_mac(s: &str) -> ApiResult<Mac> {
    Ok(crate::serve::inventory::service::parse_mac(s)?)
}

/// The whole router, with its OpenAPI document served at `/api/v1/openapi.json`.
pub(crate) fn router(state: Shared) -> Router {
    let (router, doc) = documented(Some(state.clone())).split_for_parts();
    let doc =
        crate::serve::web::openapi::DocumentJson::new(&crate::serve::web::openapi::finish(doc))
            .expect("the OpenAPI document serializes");
    router
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(Extension(doc))
        .with_state(state)
}

/// Every route, each registered through the handler's `#[utoipa::path]`: the router and the
/// document's paths are one list, so no route can be missing from the document. Without a
/// state (the document alone, for tests) the token check is left off.
pub(crate) fn documented(state: Option<Shared>) -> OpenApiRouter<Shared> {
    use crate::serve::deployments::{api as dep, capture};
    use crate::serve::inventory::api as inv;
    use crate::serve::schedules::api as sched;
    use crate::serve::store::api as store;
    use crate::serve::{boot, swarm};
    let admin = OpenApiRouter::default()
        .routes(routes!(store::images))
        .routes(routes!(swarm::torrent::torrent))
        .routes(routes!(store::verify_image))
        .routes(routes!(store::store_info))
        .routes(routes!(crate::serve::servers::servers))
        .routes(routes!(inv::machines, inv::add_machine))
        .routes(routes!(
            inv::machine,
            inv::update_machine,
            inv::remove_machine
        ))
        .routes(routes!(inv::groups, inv::add_group))
        .routes(routes!(inv::update_group, inv::remove_group))
        .routes(routes!(audit))
        .routes(routes!(inv::wake))
        .routes(routes!(dep::list, dep::create))
        .routes(routes!(dep::show))
        .routes(routes!(dep::cancel))
        .routes(routes!(dep::start_now))
        .routes(routes!(dep::events))
        .routes(routes!(capture::create))
        .routes(routes!(sched::list, sched::create))
        .routes(routes!(sched::show, sched::replace, sched::remove))
        .route_layer(middleware::from_fn(admin_only));
    let agent = OpenApiRouter::default()
        .routes(routes!(dep::task))
        .routes(routes!(dep::manifest))
        .routes(routes!(dep::progress))
        .routes(routes!(dep::result))
        .routes(routes!(dep::chunk))
        .routes(routes!(dep::stream_chunk))
        .routes(routes!(dep::session))
        .routes(routes!(dep::session_part))
        .routes(routes!(capture::outline))
        .routes(routes!(capture::have))
        .routes(routes!(capture::put_chunk))
        .routes(routes!(capture::commit))
        // A chunk is at most 64 MiB (and a frame of it a little more); so is a manifest.
        .layer(axum::extract::DefaultBodyLimit::max(65 << 20))
        .route_layer(middleware::from_fn(agent_only));
    let mut api = admin.merge(agent);
    if let Some(state) = state {
        api = api.route_layer(middleware::from_fn_with_state(state, auth));
    }
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(crate::serve::web::openapi::openapi))
        .routes(routes!(dep::hello))
        .routes(routes!(swarm::torrent::seed))
        .routes(routes!(swarm::torrent::agent_torrent))
        .routes(routes!(swarm::tracker::announce))
        .routes(routes!(swarm::tracker::scrape))
        .routes(routes!(boot::ipxe::file))
        .routes(routes!(boot::ipxe::ipxe_script))
        .nest("/api/v1", api)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(ErrorBody {
            error: "a valid API token is needed (Authorization: Bearer ...; create one with \
                    `drover token create NAME`)"
                .into(),
        }),
    )
        .into_response()
}

/// Bearer-token check for everything under `/api/v1` but the public paths: an admin's API
/// token (`drv_...`) or an agent's task token (`drt_...`, valid while its task is not over).
async fn auth(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    // The dashboard calls in-process as its logged-in user (an extension no client can set).
    if req.extensions().get::<Actor>().is_some() {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized();
    };
    if token.starts_with("drt_") {
        return match s.db.deployments().check_task_token(token).await {
            Ok(Some(t)) if t.active() => {
                req.extensions_mut()
                    .insert(crate::serve::deployments::api::AgentTask(t));
                next.run(req).await
            }
            Ok(Some(t)) => crate::serve::deployments::api::task_over(&t).into_response(),
            Ok(None) => unauthorized(),
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    match s.db.check_token(token).await {
        Ok(Some(name)) => {
            req.extensions_mut().insert(Actor(format!("token:{name}")));
            next.run(req).await
        }
        Ok(None) => unauthorized(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The admin's endpoints refuse agents' tokens.
async fn admin_only(req: Request, next: Next) -> Response {
    if req.extensions().get::<Actor>().is_none() {
        return ApiError(
            StatusCode::FORBIDDEN,
            "an agent's task token opens only its own task's endpoints".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// The agent's endpoints need a task token.
async fn agent_only(req: Request, next: Next) -> Response {
    if req
        .extensions()
        .get::<crate::serve::deployments::api::AgentTask>()
        .is_none()
    {
        return ApiError(
            StatusCode::FORBIDDEN,
            "this endpoint is an agent's: it needs the task token its machine was given".into(),
        )
        .into_response();
    }
    next.run(req).await
}

#[utoipa::path(get, path = "/healthz", tag = "server", security(()),
    summary = "200 once the server is ready",
    responses((status = 200, description = "ready"), (status = 503, description = "database unavailable", body = ErrorBody)))]
async fn healthz(State(s): State<Shared>) -> Response {
    if s.db.ping().await {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

/// A name (of a machine, group or schedule): 1 to 64 printable characters.
pub(crate) fn check_name(what: &str, n: &str) -> ApiResult<()> {
    Ok(crate::serve::inventory::service::check_name(what, n)?)
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/audit", tag = "server", summary = "The audit log, newest first",
    params(("limit" = Option<i64>, Query, description = "at most this many entries (100 unless given)")),
    responses((status = 200, description = "entries", body = [proto::api::AuditEntry])))]
async fn audit(
    State(s): State<Shared>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<proto::api::AuditEntry>>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(s.db.audit_log(limit).await?))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "server", security(()), summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): State<Shared>) -> ApiResult<Response> {
    let mut out = String::new();
    out.push_str("# HELP drover_uptime_seconds Seconds since the server started.\n");
    out.push_str("# TYPE drover_uptime_seconds gauge\n");
    out.push_str(&format!(
        "drover_uptime_seconds {:.0}\n",
        s.started.elapsed().as_secs_f64()
    ));
    out.push_str("# HELP drover_machines Machines in the inventory, by state.\n");
    out.push_str("# TYPE drover_machines gauge\n");
    for (state, n) in s.db.inventory().machine_states().await? {
        out.push_str(&format!("drover_machines{{state=\"{state}\"}} {n}\n"));
    }
    out.push_str("# HELP drover_deployments Deployments, by state.\n");
    out.push_str("# TYPE drover_deployments gauge\n");
    let counts = s.db.deployments().deployment_counts().await?;
    for (_, state, n) in counts.iter().filter(|c| c.0 == "deployments") {
        out.push_str(&format!("drover_deployments{{state=\"{state}\"}} {n}\n"));
    }
    out.push_str("# HELP drover_tasks Machines' tasks in deployments, by state.\n");
    out.push_str("# TYPE drover_tasks gauge\n");
    for (_, state, n) in counts.iter().filter(|c| c.0 == "tasks") {
        out.push_str(&format!("drover_tasks{{state=\"{state}\"}} {n}\n"));
    }
    let (schedules, runs) = s.db.schedules().schedule_counts().await?;
    out.push_str("# HELP drover_schedules Schedules (redeploys and wake-ups).\n");
    out.push_str("# TYPE drover_schedules gauge\n");
    out.push_str(&format!("drover_schedules {schedules}\n"));
    out.push_str("# HELP drover_schedule_runs_total Scheduled runs, by outcome.\n");
    out.push_str("# TYPE drover_schedule_runs_total counter\n");
    for (outcome, n) in runs {
        out.push_str(&format!(
            "drover_schedule_runs_total{{outcome=\"{outcome}\"}} {n}\n"
        ));
    }
    let images = s.images.list().await?;
    out.push_str("# HELP drover_images Image versions in the store.\n");
    out.push_str("# TYPE drover_images gauge\n");
    out.push_str(&format!("drover_images {}\n", images.len()));
    out.push_str(
        "# HELP drover_bittorrent_uploaded_bytes Bytes the server's seed uploaded, by torrent.\n",
    );
    out.push_str("# TYPE drover_bittorrent_uploaded_bytes counter\n");
    for (name, n) in s.deployer.seeder.uploaded() {
        out.push_str(&format!(
            "drover_bittorrent_uploaded_bytes{{torrent=\"{name}\"}} {n}\n"
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
