//! The HTTP API under `/api/v1` (JSON, bearer-token auth), plus `/healthz`, `/metrics` and the
//! OpenAPI document. Handlers are thin: the database and the image store do the work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use proto::api::ErrorBody;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::serve::db::{Db, DbError, MachineEdit};
use crate::serve::inventory::mac::Mac;
use transport::net::Iface;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) store_dir: PathBuf,
    pub(crate) started: Instant,
    /// The lab interface (multicast, wake-on-LAN), if there is one.
    pub(crate) iface: Option<Iface>,
    pub(crate) wol_port: u16,
    pub(crate) deployer: Arc<crate::serve::deployments::service::Deployer>,
    pub(crate) schedule_settings: crate::serve::schedules::service::Settings,
    /// The boot directory (iPXE's kernel and initramfs), and the URL machines reach us at.
    pub(crate) boot_dir: PathBuf,
    pub(crate) public_url: String,
    /// Wakes the scheduler when schedules change.
    pub(crate) schedules_changed: Arc<tokio::sync::Notify>,
    /// Full DHCP's pool and the server's address on it, when full DHCP runs.
    pub(crate) dhcp_pool: Option<(pxe::dhcp_full::Pool, std::net::Ipv4Addr)>,
    /// Tells full DHCP that reservations changed.
    pub(crate) inventory_changed: Arc<tokio::sync::Notify>,
    /// Unknown machines that PXE-boot run the agent once to register themselves.
    pub(crate) register_unknown: bool,
    /// The agent kernel's arguments before drover's own.
    pub(crate) boot_args: String,
    /// The BitTorrent tracker of the image torrents.
    pub(crate) tracker: Arc<crate::serve::swarm::tracker::Tracker>,
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
            DbError::Exists(_) => Self(StatusCode::CONFLICT, e.to_string()),
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
    s.parse().map_err(ApiError::bad_request)
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
    use crate::serve::schedules::api as sched;
    use crate::serve::{boot, swarm};
    let admin = OpenApiRouter::default()
        .routes(routes!(images))
        .routes(routes!(swarm::torrent::torrent))
        .routes(routes!(verify_image))
        .routes(routes!(machines, add_machine))
        .routes(routes!(machine, update_machine, remove_machine))
        .routes(routes!(groups, add_group))
        .routes(routes!(remove_group))
        .routes(routes!(audit))
        .routes(routes!(wake))
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
        .routes(routes!(dep::session))
        .routes(routes!(dep::session_part))
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

/// Reads the image store (images captured by the CLI show up at once).
async fn scan_images(dir: PathBuf) -> anyhow::Result<Vec<proto::api::Image>> {
    tokio::task::spawn_blocking(move || {
        if !dir.join("manifests").exists() && !dir.exists() {
            return Ok(Vec::new());
        }
        let store = imaging::store::Store::open(&dir)?;
        let (all, problems) = store.scan()?;
        for p in problems {
            tracing::warn!(error = %anyhow::Error::from(p), "damaged image manifest");
        }
        // How many images hold each chunk: an image's chunks held by another are shared
        // (stored once).
        let mut holders = std::collections::HashMap::<&imaging::manifest::Hash, usize>::new();
        for i in &all {
            let mine: std::collections::HashSet<_> =
                i.manifest.chunks().map(|(_, c)| &c.hash).collect();
            for h in mine {
                *holders.entry(h).or_default() += 1;
            }
        }
        Ok(all
            .iter()
            .map(|i| {
                let m = &i.manifest;
                let mut filesystems: Vec<String> = m
                    .areas
                    .iter()
                    .filter_map(|a| a.fs.as_ref().map(|f| f.kind.to_string()))
                    .collect();
                filesystems.dedup();
                let shared = m
                    .chunks()
                    .filter(|(_, c)| holders.get(&c.hash).is_some_and(|n| *n > 1))
                    .count();
                proto::api::Image {
                    id: i.id.clone(),
                    name: m.name.clone(),
                    version: m.name_version,
                    created: m.created,
                    size: m.disk_size,
                    used_bytes: m.used_bytes(),
                    stored_bytes: m.stored_bytes(),
                    chunks: m.chunks().count() as u64,
                    shared_chunks: shared as u64,
                    filesystems,
                    source: m.source.clone(),
                }
            })
            .collect())
    })
    .await?
}

/// `POST /images/{reference}/verify`: every chunk of the image re-read, decompressed and
/// re-hashed from the store; the bad ones listed.
#[utoipa::path(post, path = "/images/{reference}/verify", tag = "images",
    summary = "Re-read, decompress and re-hash every chunk of the image in the store; list the bad ones",
    params(("reference" = String, Path, description = "an image id (or its start), name or name@version")),
    responses((status = 200, description = "what was found", body = proto::api::ImageVerified),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn verify_image(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(reference): UrlPath<String>,
) -> ApiResult<Json<proto::api::ImageVerified>> {
    let dir = s.store_dir.clone();
    let v = tokio::task::spawn_blocking(move || -> ApiResult<proto::api::ImageVerified> {
        let store = imaging::store::Store::open(&dir).map_err(anyhow::Error::from)?;
        let img = store.resolve(&reference).map_err(|e| match e {
            imaging::store::StoreError::NotFound(_) | imaging::store::StoreError::Ambiguous(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            e => anyhow::Error::from(e).into(),
        })?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let v = imaging::restore::verify(
            &img.manifest,
            &store,
            threads,
            &imaging::progress::NoProgress,
        );
        Ok(proto::api::ImageVerified {
            ok: v.bad.is_empty(),
            id: img.id,
            name: img.manifest.name,
            version: img.manifest.name_version,
            chunks: v.chunks,
            bad: v
                .bad
                .into_iter()
                .map(|b| proto::api::BadChunk {
                    hash: b.hash.to_hex(),
                    disk_offset: b.disk_offset,
                    error: b.error,
                })
                .collect(),
        })
    })
    .await
    .map_err(anyhow::Error::from)??;
    let label = format!("{}@{}", v.name, v.version);
    let outcome = match v.bad.len() {
        0 => format!("{label}: all {} chunks right", v.chunks),
        n => format!("{label}: {n} of {} chunks bad", v.chunks),
    };
    s.db.audit(&actor.0, "image.verify", &outcome).await?;
    Ok(Json(v))
}

#[utoipa::path(get, path = "/images", tag = "images", summary = "Image versions in the store",
    responses((status = 200, description = "images", body = [proto::api::Image]), (status = 401, body = ErrorBody)))]
async fn images(State(s): State<Shared>) -> ApiResult<Json<Vec<proto::api::Image>>> {
    Ok(Json(scan_images(s.store_dir.clone()).await?))
}

#[derive(Deserialize)]
struct MachineQuery {
    group: Option<String>,
}

#[utoipa::path(get, path = "/machines", tag = "inventory", summary = "Machines (of one group with ?group=)",
    params(("group" = Option<String>, Query, description = "only this group's machines")),
    responses((status = 200, description = "machines", body = [proto::api::Machine]), (status = 401, body = ErrorBody)))]
async fn machines(
    State(s): State<Shared>,
    Query(q): Query<MachineQuery>,
) -> ApiResult<Json<Vec<proto::api::Machine>>> {
    Ok(Json(s.db.inventory().machines(q.group.as_deref()).await?))
}

pub(crate) fn check_name(what: &str, n: &str) -> ApiResult<()> {
    if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "{what} {n:?}: 1 to 64 printable characters"
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/machines", tag = "inventory", summary = "Add a machine",
    request_body = proto::api::NewMachine,
    responses((status = 201, description = "added", body = proto::api::Machine), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_machine(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<proto::api::NewMachine>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(m) = body?;
    let mac = parse_mac(&m.mac)?;
    let mut edit = MachineEdit::default();
    if let Some(n) = m.name {
        check_name("name", &n)?;
        edit.name = Some(n);
    }
    if let Some(g) = m.group {
        check_name("group", &g)?;
        edit.group = Some(Some(g));
    }
    if let Some(ip) = &m.ip {
        edit.ip = Some(Some(check_ip(&s, ip)?));
    }
    if let Some(d) = &m.disk {
        edit.target_disk = Some(Some(check_disk(d)?));
    }
    let added = s.db.inventory().add_machine(mac, &edit).await?;
    s.db.audit(&actor.0, "machine.add", &format!("{mac} {:?}", added.name))
        .await?;
    if added.ip.is_some() {
        s.inventory_changed.notify_one();
    }
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

/// A reservation's address: IPv4, and in full DHCP's subnet when full DHCP runs.
fn check_ip(s: &AppState, ip: &str) -> ApiResult<std::net::Ipv4Addr> {
    let a: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("ip {ip:?}: not an IPv4 address")))?;
    if let Some((pool, server)) = &s.dhcp_pool {
        pool.check_reservation(a, *server)
            .map_err(ApiError::bad_request)?;
    }
    Ok(a)
}

/// The disk a machine's agent writes: `serial:...` or `size:BYTES`, stored in that form.
fn check_disk(d: &str) -> ApiResult<String> {
    d.parse::<imaging::disks::Selector>()
        .map(|sel| sel.to_string())
        .map_err(ApiError::bad_request)
}

#[utoipa::path(get, path = "/machines/{mac}", tag = "inventory", summary = "One machine",
    params(("mac" = String, Path, example = "aa:bb:cc:dd:ee:ff")),
    responses((status = 200, description = "the machine", body = proto::api::Machine), (status = 404, body = ErrorBody)))]
async fn machine(State(s): State<Shared>, UrlPath(mac): UrlPath<String>) -> ApiResult<Response> {
    Ok(Json(s.db.inventory().machine(parse_mac(&mac)?).await?).into_response())
}

#[utoipa::path(patch, path = "/machines/{mac}", tag = "inventory",
    summary = "Rename, regroup, reserve an address, pin the disk (null clears group, ip, disk)",
    params(("mac" = String, Path, example = "aa:bb:cc:dd:ee:ff")), request_body = proto::api::MachinePatch,
    responses((status = 200, description = "changed", body = proto::api::Machine), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_machine(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(mac): UrlPath<String>,
    body: Result<Json<proto::api::MachinePatch>, JsonRejection>,
) -> ApiResult<Response> {
    let mac = parse_mac(&mac)?;
    let Json(patch) = body?;
    let mut edit = MachineEdit::default();
    if let Some(n) = &patch.name {
        check_name("name", n)?;
        edit.name = Some(n.clone());
    }
    if let Some(g) = &patch.group {
        if let Some(g) = g {
            check_name("group", g)?;
        }
        edit.group = Some(g.clone());
    }
    if let Some(ip) = &patch.ip {
        edit.ip = Some(ip.as_deref().map(|ip| check_ip(&s, ip)).transpose()?);
    }
    if let Some(d) = &patch.disk {
        edit.target_disk = Some(d.as_deref().map(check_disk).transpose()?);
    }
    let m = s.db.inventory().update_machine(mac, &edit).await?;
    let detail = serde_json::to_string(&patch).map_err(anyhow::Error::from)?;
    s.db.audit(&actor.0, "machine.update", &format!("{mac} {detail}"))
        .await?;
    if edit.ip.is_some() {
        s.inventory_changed.notify_one();
    }
    Ok(Json(m).into_response())
}

#[utoipa::path(delete, path = "/machines/{mac}", tag = "inventory", summary = "Remove a machine",
    params(("mac" = String, Path, example = "aa:bb:cc:dd:ee:ff")),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
async fn remove_machine(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(mac): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let mac = parse_mac(&mac)?;
    s.db.inventory().remove_machine(mac).await?;
    s.db.audit(&actor.0, "machine.remove", &mac.to_string())
        .await?;
    s.inventory_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/groups", tag = "inventory", summary = "Groups with their machine counts",
    responses((status = 200, description = "groups", body = [proto::api::Group])))]
async fn groups(State(s): State<Shared>) -> ApiResult<Json<Vec<proto::api::Group>>> {
    Ok(Json(s.db.inventory().groups().await?))
}

#[utoipa::path(post, path = "/groups", tag = "inventory", summary = "Add a group",
    request_body = proto::api::NewGroup,
    responses((status = 201, description = "added", body = proto::api::Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_group(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<proto::api::NewGroup>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(g) = body?;
    check_name("group", &g.name)?;
    let added = s.db.inventory().add_group(&g.name).await?;
    s.db.audit(&actor.0, "group.add", &g.name).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

#[utoipa::path(delete, path = "/groups/{name}", tag = "inventory",
    summary = "Remove a group (its machines stay, without a group)", params(("name" = String, Path)),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
async fn remove_group(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    s.db.inventory().remove_group(&name).await?;
    s.db.audit(&actor.0, "group.remove", &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends wake-on-LAN magic packets to the lab interface's subnet broadcast.
#[utoipa::path(post, path = "/wake", tag = "inventory",
    summary = "Send wake-on-LAN magic packets (to machines by MAC and/or a group's machines)",
    request_body = proto::api::Wake,
    responses((status = 200, description = "sent", body = proto::api::Woken), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn wake(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<proto::api::Wake>, JsonRejection>,
) -> ApiResult<Json<proto::api::Woken>> {
    let Json(w) = body?;
    let mut macs = w
        .macs
        .iter()
        .map(|m| parse_mac(m))
        .collect::<ApiResult<Vec<Mac>>>()?;
    if let Some(g) = &w.group {
        if !s
            .db
            .inventory()
            .groups()
            .await?
            .iter()
            .any(|x| &x.name == g)
        {
            return Err(DbError::NotFound(format!("group {g:?}")).into());
        }
        for m in s.db.inventory().machines(Some(g)).await? {
            macs.push(parse_mac(&m.mac)?);
        }
    }
    macs.sort();
    macs.dedup();
    if macs.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to wake: give \"macs\" or a \"group\" with machines",
        ));
    }
    let Some(iface) = s.iface.clone() else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            crate::serve::boot::wol::NO_IFACE.into(),
        ));
    };
    let to = crate::serve::boot::wol::wake(iface, s.wol_port, macs.clone()).await?;
    let woken: Vec<String> = macs.iter().map(Mac::to_string).collect();
    s.db.audit(&actor.0, "wake", &format!("{} via {to}", woken.join(" ")))
        .await?;
    Ok(Json(proto::api::Woken {
        woken,
        to: to.to_string(),
    }))
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
    let images = scan_images(s.store_dir.clone()).await?;
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
