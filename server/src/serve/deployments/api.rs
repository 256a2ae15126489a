//! The API of deployments (the admin's: create, list, show, start now, cancel, live events)
//! and of agents (hello, task, manifest, chunk by hash, progress, result). An agent's token
//! opens only its own task's endpoints; the task is implied by the token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;
use imaging::manifest::Hash;
use serde::Deserialize;

use proto::api::{self, ErrorBody};

use crate::serve::deployments::fit::Fit;
use crate::serve::deployments::repo::{Deployment, Task, TaskProgress};
use crate::serve::deployments::service::{AgentSwarm, DeployError, DeployRequest};
use crate::serve::deployments::stream::{Stream as LiveStream, IMAGE_PREFIX};
use crate::serve::web::api::{parse_mac, Actor, ApiError, ApiResult, Shared};

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Bad(m) => Self::bad_request(m),
            DeployError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            DeployError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            DeployError::Other(e) => e.into(),
        }
    }
}

/// The task an agent's token opened (set by the auth layer).
#[derive(Clone)]
pub(crate) struct AgentTask(pub(crate) Task);

/// A task as its agent sees it: what to write and how to get it.
/// `disk`: the machine's pinned disk (`serial:...`/`size:...`), which its agent must write.
/// `bittorrent`: the swarm limits, for a deployment that uses a swarm.
fn task_info(
    t: &Task,
    d: &Deployment,
    disk: Option<&str>,
    group_layout: Option<api::Layout>,
    swarm: AgentSwarm,
    personalize: Option<api::Personalization>,
    luks_keys: api::LuksKeys,
) -> Result<api::AgentTask, ApiError> {
    let transport: api::Transport = d.transport;
    let fallback: api::Fallback = d.fallback;
    let multicast = match (&d.session, &d.mcast_group) {
        (Some(s), Some(g)) if transport == api::Transport::Multicast => {
            Some(api::MulticastAssignment {
                session: *s as u32,
                group: g.clone(),
            })
        }
        _ => None,
    };
    let swarm_used =
        transport == api::Transport::Bittorrent || fallback == api::Fallback::Bittorrent;
    Ok(api::AgentTask {
        id: t.id.clone(),
        deployment: d.id.clone(),
        kind: d.kind,
        state: t.state,
        image: api::ImageRef {
            id: d.image_id.clone(),
            name: d.image_name.clone(),
        },
        transport,
        deployment_state: d.state,
        multicast,
        fallback,
        bittorrent: swarm_used.then_some(api::SwarmLimits {
            upload_bps: swarm.upload_bps,
            peers: swarm.peers,
        }),
        then: d.then_action,
        bytes_total: t.bytes_total.max(0) as u64,
        disk: disk.map(str::to_string),
        personalize,
        luks_keys,
        // The deployment's, else the machine's group's, else grow.
        layout: d.layout.or(group_layout).unwrap_or_default(),
        live: false,
    })
}

/// Whether deployment `d` is one end of a stream from a machine's disk here: the source's
/// capture or the targets' restore.
fn is_live(s: &Shared, d: &Deployment) -> bool {
    d.image_id.starts_with(IMAGE_PREFIX) || s.deployer.stream_by_capture(&d.id).is_some()
}

/// The layout of machine `mac`'s group, if it is in one that has one.
async fn group_layout(s: &Shared, mac: &str) -> Option<api::Layout> {
    let m = s.db.inventory().machine(mac.parse().ok()?).await.ok()?;
    s.db.inventory()
        .group(m.group.as_deref()?)
        .await
        .ok()?
        .layout
}

/// The LUKS passphrases a task's agent gets: a live capture's only.
fn task_keys(s: &Shared, t: &Task, d: &Deployment) -> api::LuksKeys {
    if d.kind != api::TaskKind::Capture {
        return api::LuksKeys::default();
    }
    if !t.active() {
        s.deployer.forget_capture_keys(&d.id);
        return api::LuksKeys::default();
    }
    s.deployer.capture_keys(&d.id)
}

/// A task as the admin sees it, with its ETA.
fn task_view(t: &Task, name: Option<&str>) -> Result<api::Task, ApiError> {
    let eta = (t.active() && t.rate_bps > 0 && t.bytes_done > 0)
        .then(|| (t.bytes_total - t.bytes_done).max(0) as f64 * 8.0 / t.rate_bps as f64);
    let n = |v: i64| v.max(0) as u64;
    Ok(api::Task {
        id: t.id.clone(),
        deployment_id: t.deployment_id.clone(),
        mac: t.mac.clone(),
        name: name.map(str::to_string),
        state: t.state,
        reason: t.reason.clone(),
        counters: api::WorkCounters {
            bytes_done: n(t.bytes_done),
            multicast_chunks: n(t.multicast_chunks),
            unicast_chunks: n(t.unicast_chunks),
            kept_chunks: n(t.kept_chunks),
            swarm_bytes: n(t.swarm_bytes),
        },
        bytes_total: n(t.bytes_total),
        rate_bps: n(t.rate_bps),
        percent: if t.bytes_total > 0 {
            (1000 * t.bytes_done / t.bytes_total) as f64 / 10.0
        } else {
            100.0
        },
        eta_seconds: eta.map(f64::round),
        created_ms: t.created_ms,
        started_ms: t.started_ms,
        updated_ms: t.updated_ms,
        finished_ms: t.finished_ms,
        personalized: t.personalized.clone(),
    })
}

/// A deployment with its tasks and totals.
async fn deployment_view(s: &Shared, d: &Deployment) -> ApiResult<api::Deployment> {
    let tasks = s.db.deployments().tasks_of(&d.id).await?;
    let names: std::collections::HashMap<String, String> =
        s.db.inventory()
            .machines(None)
            .await?
            .into_iter()
            .map(|m| (m.mac, m.name))
            .collect();
    let mut task_states = std::collections::BTreeMap::<String, u64>::new();
    for t in &tasks {
        *task_states.entry(t.state.to_string()).or_default() += 1;
    }
    let sum = |f: fn(&Task) -> i64| tasks.iter().map(f).sum::<i64>().max(0) as u64;
    Ok(api::Deployment {
        id: d.id.clone(),
        kind: d.kind,
        image_id: d.image_id.clone(),
        image_name: d.image_name.clone(),
        targets: d.targets.clone(),
        transport: d.transport,
        fallback: d.fallback,
        min_machines: d.min_machines,
        max_wait_ms: d.max_wait_ms,
        start_at_ms: d.start_at_ms,
        then_action: d.then_action,
        personalize: d.personalize.clone(),
        layout: d.layout,
        state: d.state,
        owner: d.owner.clone(),
        session: d.session,
        mcast_group: d.mcast_group.clone(),
        mcast_http: d.mcast_http.clone(),
        created_by: d.created_by.clone(),
        created_ms: d.created_ms,
        started_ms: d.started_ms,
        finished_ms: d.finished_ms,
        machines: tasks.len() as u64,
        task_states,
        rate_bps: sum(|t| t.rate_bps),
        bytes_done: sum(|t| t.bytes_done),
        bytes_total: sum(|t| t.bytes_total),
        tasks: tasks
            .iter()
            .map(|t| task_view(t, names.get(&t.mac).map(String::as_str)))
            .collect::<Result<_, _>>()?,
    })
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/deployments", tag = "deployments", summary = "Deployments, newest first, each with its tasks",
    params(("limit" = Option<i64>, Query, description = "at most this many (50 unless given)")),
    responses((status = 200, description = "deployments", body = [api::Deployment])))]
pub(crate) async fn list(
    State(s): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<api::Deployment>>> {
    let mut out = Vec::new();
    for d in
        s.db.deployments()
            .deployments(q.limit.unwrap_or(50).clamp(1, 1000))
            .await?
    {
        out.push(deployment_view(&s, &d).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments",
    summary = "One deployment with every machine's progress, rate and ETA", params(("id" = String, Path, description = "the deployment's id (or its start)")),
    responses((status = 200, description = "the deployment", body = api::Deployment), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<api::Deployment>> {
    let d = s.db.deployments().deployment(&id).await?;
    Ok(Json(deployment_view(&s, &d).await?))
}

#[utoipa::path(post, path = "/deployments", tag = "deployments", summary = "Deploy an image to machines (MAC) and groups",
    request_body = api::NewDeployment,
    responses((status = 201, description = "created", body = api::Deployment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<api::NewDeployment>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(b) = body?;
    if b.from.is_none() && b.keep_as.is_some() {
        return Err(ApiError::bad_request(
            "keep_as is for a deployment from a machine's disk (from)",
        ));
    }
    let max_wait = b
        .max_wait
        .as_deref()
        .map(transport::fmt::parse_duration)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let start_at_ms = b
        .start_at
        .as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .map_err(|e| ApiError::bad_request(format!("start_at {t:?}: {e} (use RFC 3339)")))
        })
        .transpose()?;
    let r = DeployRequest {
        image: b.image,
        targets: b.to.iter().map(|t| t.trim().to_string()).collect(),
        transport: b.transport,
        fallback: b.fallback,
        min_machines: b.min_machines,
        max_wait,
        start_at_ms,
        then_action: b.then,
        personalize: b.personalize,
        layout: b.layout,
    };
    let d = match &b.from {
        Some(from) => {
            s.deployer
                .create_stream(from, b.keep_as, r, &actor.0)
                .await?
        }
        None => s.deployer.create(r, &actor.0).await?,
    };
    Ok((StatusCode::CREATED, Json(deployment_view(&s, &d).await?)).into_response())
}

/// `POST /deployments/{id}/cancel` and `/start`: the deployment as it is afterwards.
#[utoipa::path(post, path = "/deployments/{id}/cancel", tag = "deployments",
    summary = "Cancel a deployment: its tasks end, its session stops", params(("id" = String, Path, description = "the deployment's id (or its start)")),
    responses((status = 200, description = "cancelled", body = api::Deployment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn cancel(
    s: State<Shared>,
    actor: Extension<Actor>,
    id: UrlPath<String>,
) -> ApiResult<Json<api::Deployment>> {
    act(s, actor, id, true).await
}

#[utoipa::path(post, path = "/deployments/{id}/start", tag = "deployments",
    summary = "Start a waiting multicast deployment's stream now", params(("id" = String, Path, description = "the deployment's id (or its start)")),
    responses((status = 200, description = "starting", body = api::Deployment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn start_now(
    s: State<Shared>,
    actor: Extension<Actor>,
    id: UrlPath<String>,
) -> ApiResult<Json<api::Deployment>> {
    act(s, actor, id, false).await
}

async fn act(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(id): UrlPath<String>,
    cancel: bool,
) -> ApiResult<Json<api::Deployment>> {
    if cancel {
        s.deployer.cancel(&id, &actor.0).await?;
    } else {
        s.deployer.start_now(&id, &actor.0).await?;
    }
    let d = s.db.deployments().deployment(&id).await?;
    Ok(Json(deployment_view(&s, &d).await?))
}

/// Server-sent events: the deployment (with its tasks) at once and at every change, at most
/// four times a second, until it is over.
#[utoipa::path(get, path = "/deployments/{id}/events", tag = "deployments",
    summary = "Server-sent events: `deployment` with the deployment (as GET) at once and at every change, until it is over", params(("id" = String, Path, description = "the deployment's id (or its start)")),
    responses((status = 200, description = "`event: deployment` records, each a Deployment", content_type = "text/event-stream"), (status = 404, body = ErrorBody)))]
pub(crate) async fn events(
    State(s): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    s.db.deployments().deployment(&id).await?;
    let rx = s.deployer.subscribe();
    let stream = futures_util::stream::unfold(
        (s, id, rx, true, false),
        |(s, id, mut rx, first, over)| async move {
            if over {
                return None;
            }
            if !first {
                // Wait for a change of this deployment, then let more gather.
                loop {
                    match rx.recv().await {
                        Ok(changed) if changed == id => break,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(_) => return None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                while rx.try_recv().is_ok() {}
            }
            let d = s.db.deployments().deployment(&id).await.ok()?;
            let view = deployment_view(&s, &d).await.ok()?;
            let over = !view.state.active();
            let ev = Event::default()
                .event("deployment")
                .data(serde_json::to_string(&view).ok()?);
            Some((Ok(ev), (s, id, rx, false, over)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

// ---- the agent's side ----

/// How long an agent waits between polls (or a waiting hello waits for a task).
const POLL_MS: u64 = 2000;

/// `POST /api/v1/agent/hello` (public): registers an unknown machine, updates a known one,
/// and answers with its task, if it has one. An agent that shows its task token keeps it;
/// one that shows none gets a new token (the machine is identified by its MAC, as PXE does).
#[utoipa::path(post, path = "/api/v1/agent/hello", tag = "agent", security(()),
    summary = "An agent says hello (no login; only from the machine itself)",
    description = "Only from the machine itself: the server's own host, an address its neighbour table or its DHCP maps to the MAC, or a network in agent_networks, else 403, audited. Registers an unknown MAC, records the disk, answers with the machine's task and, to an agent without a valid task token, a new one (tokens handed out before keep working).",
    request_body = api::Hello,
    responses((status = 200, description = "the machine, its task (or null), a token (when handed out), poll_ms", body = api::HelloReply),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn hello(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<api::Hello>, JsonRejection>,
) -> ApiResult<Json<api::HelloReply>> {
    let Json(h) = body?;
    let mac = parse_mac(&h.mac)?;
    // Only the machine itself says hello for its MAC: it may register, report its disks and
    // receive its task's token; another host of the network gets nothing.
    let claimed = format!("claimed {mac}");
    let vouched = match crate::serve::auth::caller::vouch_or_audit(
        &s,
        peer.ip(),
        mac,
        "agent.hello.refused",
        &claimed,
    )
    .await?
    {
        Ok(why) => why,
        Err(why) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("hello for {mac} refused: {why}"),
            ));
        }
    };
    let disk = h.disks.iter().find(|d| !d.removable);
    let m =
        s.db.deployments()
            .machine_hello(
                mac,
                disk.and_then(|d| d.serial.as_deref()),
                disk.and_then(|d| d.size)
                    .map(|n| n.min(i64::MAX as u64) as i64),
            )
            .await?;
    // Its deployments are run by this server from now on (several servers on one database).
    s.db.servers()
        .machine_seen_by(&m.mac, &s.deployer.owner)
        .await?;
    tracing::debug!(%mac, version = ?h.version, "hello");
    if !h.missing_firmware.is_empty() {
        let list = h.missing_firmware.join("; ");
        tracing::warn!(%mac, "the boot environment lacks firmware: {list} (deploy/build-boot-env --firmware-dir)");
        s.db.audit(&format!("agent:{mac}"), "agent.firmware_missing", &list)
            .await?;
    }
    let mut out = api::HelloReply {
        machine: api::MachineRef {
            mac: m.mac.clone(),
            name: m.name.clone(),
            registered: m.registered,
        },
        task: None,
        token: None,
        poll_ms: POLL_MS,
    };
    let mut watch = h.wait.then(|| s.deployer.watch_tasks());
    let mut task = s.db.deployments().active_task(mac).await?;
    if let (None, Some(rx)) = (&task, &mut watch) {
        let given = async {
            loop {
                match rx.recv().await {
                    Ok(macs) if macs.contains(&mac) => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_millis(POLL_MS), given)
            .await
            .is_ok()
        {
            task = s.db.deployments().active_task(mac).await?;
        }
        // It waited: ask again at once.
        out.poll_ms = 0;
    }
    let Some(task) = task else {
        return Ok(Json(out));
    };
    let d = s.db.deployments().deployment(&task.deployment_id).await?;
    let personalize = personalization(&s, &task, &d, peer.ip()).await?;
    let layout = group_layout(&s, &task.mac).await;
    let mut info = task_info(
        &task,
        &d,
        m.target_disk.as_deref(),
        layout,
        s.deployer.agent_swarm,
        personalize,
        task_keys(&s, &task, &d),
    )?;
    info.live = is_live(&s, &d);
    out.task = Some(info);
    let shown = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let keeps = match shown {
        Some(t) => {
            s.db.deployments()
                .check_task_token(t)
                .await?
                .is_some_and(|t| t.id == task.id && t.active())
        }
        None => false,
    };
    if !keeps {
        let to = peer.ip().to_canonical().to_string();
        out.token = Some(s.db.deployments().issue_task_token(&task.id, &to).await?);
        s.db.audit(
            &format!("machine:{mac}"),
            "task.token",
            &format!(
                "task {} of deployment {} to {to} ({vouched})",
                task.id, d.id
            ),
        )
        .await?;
    }
    Ok(Json(out))
}

/// `/api/v1/agent/session/...`: the agent's multicast session (`session`: its description,
/// `register`: a receiver id and the datagram key, `chunks/{i}`), served from the session's
/// own routes to the agents of its deployment only (their task token checked by the auth
/// layer). No session runs a port of its own.
#[utoipa::path(get, path = "/agent/session", tag = "agent",
    summary = "Agent: its deployment's live multicast session's description (chunks, their hashes); the session opens no port of its own",
    responses((status = 200, description = "the session description", content_type = "application/json"), (status = 401, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn session(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    use tower::ServiceExt;
    let routes = s.deployer.session_routes(&t.deployment_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::GONE,
            format!(
                "deployment {} has no live multicast session here",
                t.deployment_id
            ),
        )
    })?;
    let rest = req
        .uri()
        .path()
        .split_once("/agent/session")
        .map_or("", |(_, r)| r)
        .trim_start_matches('/')
        .to_string();
    let path = if rest.is_empty() {
        "/session".to_string()
    } else {
        format!("/{rest}")
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = path
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{path:?}: not a session path")))?;
    // The original request's extensions (the caller's address) go along.
    let resp = routes
        .oneshot(axum::extract::Request::from_parts(parts, body))
        .await
        .unwrap_or_else(|e| match e {});
    Ok(resp)
}

/// The session's own paths under `/api/v1/agent/session/`, served by [`session`].
#[utoipa::path(method(get, post), path = "/agent/session/{*rest}", tag = "agent",
    summary = "Agent: the session's description (session), registration (POST register: a receiver id and the session's datagram key) or one chunk by index (chunks/{i})",
    params(("rest" = String, Path, description = "session, register or chunks/{i}")),
    responses((status = 200, description = "JSON, or a zstd frame for a chunk"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn session_part(
    s: State<Shared>,
    task: Extension<AgentTask>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    session(s, task, req).await
}

/// `GET /api/v1/agent/task`: the agent's task as it is now (its multicast session may have
/// ended, or a new one started after a server restart).
#[utoipa::path(get, path = "/agent/task", tag = "agent", summary = "Agent: its task now (multicast session, if one is live)",
    responses((status = 200, description = "task", body = api::TaskReply), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn task(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(AgentTask(t)): Extension<AgentTask>,
) -> ApiResult<Json<api::TaskReply>> {
    let t = s.db.deployments().task(&t.id).await?;
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    let disk = match t.mac.parse() {
        Ok(mac) => {
            s.db.inventory()
                .machine(mac)
                .await
                .ok()
                .and_then(|m| m.target_disk)
        }
        Err(_) => None,
    };
    let personalize = personalization(&s, &t, &d, peer.ip()).await?;
    let layout = group_layout(&s, &t.mac).await;
    let mut task = task_info(
        &t,
        &d,
        disk.as_deref(),
        layout,
        s.deployer.agent_swarm,
        personalize,
        task_keys(&s, &t, &d),
    )?;
    task.live = is_live(&s, &d);
    Ok(Json(api::TaskReply { task }))
}

/// A restore task's personalization for its machine. One that can no longer be made (a
/// variable its template names was removed since the deployment was created) fails the
/// task, saying why: better than a machine that comes up as the golden one.
async fn personalization(
    s: &Shared,
    t: &Task,
    d: &Deployment,
    peer: std::net::IpAddr,
) -> ApiResult<Option<api::Personalization>> {
    if d.kind != api::TaskKind::Restore {
        return Ok(None);
    }
    match super::personalize::for_task(&s.db, &d.personalize, &t.mac, Some(peer.to_canonical()))
        .await
    {
        Ok(p) => Ok(p),
        Err(crate::serve::db::DbError::Invalid(why)) => {
            let reason = format!("personalization: {why}");
            s.db.deployments()
                .finish_task(&t.id, "failed", Some(&reason), None, &[])
                .await?;
            s.deployer.changed(&t.deployment_id);
            Err(task_over(&s.db.deployments().task(&t.id).await?))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /api/v1/agent/manifest`: the task's image.
#[utoipa::path(get, path = "/agent/manifest", tag = "agent",
    summary = "Agent: its task's image manifest; with disk_size smaller than the image needs, the image fitted to that disk (filesystems shrunk; 503 while it is made)",
    params(("disk_size" = Option<u64>, Query, description = "bytes of the machine's (smallest) disk")),
    responses((status = 200, description = "{id, manifest, live}", content_type = "application/json"), (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn manifest(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    Query(q): Query<ManifestQuery>,
) -> ApiResult<Json<api::ManifestReply<imaging::manifest::Manifest>>> {
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    if d.image_id.starts_with(IMAGE_PREFIX) {
        return stream_manifest(&s, &d).await.map(Json);
    }
    let img = s.deployer.image(&d.image_id).await?;
    if let Some(disk) = q.disk_size.filter(|&n| n < img.manifest.min_size) {
        // The image does not fit that disk as captured: the machine gets it fitted.
        return match s.deployer.fit(&d.image_id, disk) {
            Fit::Making => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "fitting {} to this machine's {disk}-byte disk (shrinking its \
                     filesystems): ask again",
                    d.image_name
                ),
            )),
            Fit::Failed(why) => Err(ApiError::new(StatusCode::CONFLICT, why)),
            Fit::Ready(id) => {
                let f = s.deployer.image(&id).await?;
                s.deployer.task_fitted(&d.id, &t.id).await;
                // What the machine writes: the fitted image's chunks.
                let cs = f.manifest.chunk_size;
                let total: u64 = f
                    .manifest
                    .chunks()
                    .map(|(a, c)| a.region_len(c.index, cs))
                    .sum();
                s.db.deployments()
                    .set_task_total(&t.id, total as i64)
                    .await?;
                Ok(Json(api::ManifestReply {
                    id,
                    manifest: f.manifest.clone(),
                    live: false,
                }))
            }
        };
    }
    Ok(Json(api::ManifestReply {
        id: d.image_id,
        manifest: img.manifest.clone(),
        live: false,
    }))
}

#[derive(Deserialize)]
pub(crate) struct ManifestQuery {
    /// Bytes of the machine's (smallest) disk.
    disk_size: Option<u64>,
}

/// How long an agent's ask about a stream is held for the source machine.
const STREAM_HOLD: Duration = Duration::from_secs(20);

/// The stream feeding restore deployment `d`, or why there is none.
fn stream_for(s: &Shared, d: &Deployment) -> ApiResult<std::sync::Arc<LiveStream>> {
    s.deployer.stream_by_restore(&d.id).ok_or_else(|| {
        ApiError::new(
            StatusCode::GONE,
            format!(
                "deployment {}'s stream from {} is over (the server restarted?)",
                d.id, d.image_name
            ),
        )
    })
}

/// A stream's manifest: the outline while the source reads (held a while for it), the
/// committed manifest once there is one.
async fn stream_manifest(
    s: &Shared,
    d: &Deployment,
) -> ApiResult<api::ManifestReply<imaging::manifest::Manifest>> {
    let st = stream_for(s, d)?;
    let failed = |why: String| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("the source machine {} failed: {why}", st.source),
        )
    };
    let live = st
        .wait_live(STREAM_HOLD)
        .await
        .map_err(failed)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the source machine {} has not read its disk's layout yet",
                    st.source
                ),
            )
        })?;
    // Once every chunk came, the commit follows: wait a while for it.
    let finished = match live.placed() == live.chunks() {
        true => {
            let l = live.clone();
            tokio::task::spawn_blocking(move || l.wait_finished(STREAM_HOLD))
                .await
                .map_err(anyhow::Error::from)?
                .map_err(|e| failed(format!("{e:#}")))?
        }
        false => live.finished(),
    };
    let id = st.kept.lock().expect("lock").clone().unwrap_or_default();
    Ok(match finished {
        Some(m) => api::ManifestReply {
            id,
            manifest: m,
            live: false,
        },
        None => api::ManifestReply {
            id,
            manifest: live.outline().clone(),
            live: true,
        },
    })
}

/// `GET /api/v1/agent/stream/{i}`: chunk `i` of the task's stream from a machine's disk, its
/// hash then its plaintext, once the source uploaded it (held a while for it).
#[utoipa::path(get, path = "/agent/stream/{i}", tag = "agent",
    summary = "Agent (deployment from a machine's disk): chunk i of the stream as its BLAKE3 hash then its plaintext, once the source uploaded it",
    params(("i" = u64, Path, description = "the chunk's place in the stream")),
    responses((status = 200, description = "the hash (32 bytes) and the plaintext", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn stream_chunk(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    UrlPath(i): UrlPath<usize>,
) -> ApiResult<Response> {
    if !t.active() {
        return Err(task_over(&t));
    }
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    if !d.image_id.starts_with(IMAGE_PREFIX) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("deployment {} is not a stream from a machine's disk", d.id),
        ));
    }
    let st = stream_for(&s, &d)?;
    let failed = |why: String| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("the source machine {} failed: {why}", st.source),
        )
    };
    let away = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "chunk {i} has not come from the source machine {} yet",
                st.source
            ),
        )
    };
    let live = st
        .wait_live(STREAM_HOLD)
        .await
        .map_err(failed)?
        .ok_or_else(away)?;
    let len = live.plain_len(i).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no chunk {i} in the stream"))
    })?;
    let store = s.deployer.store()?;
    let permit = s
        .deployer
        .chunk_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(anyhow::Error::from)?;
    let l = live.clone();
    let r = tokio::task::spawn_blocking(move || {
        let h = l.hash(i, STREAM_HOLD)?;
        let plain = store.read_chunk(&h, len)?;
        anyhow::Ok(transport::live::payload(&h, &plain))
    })
    .await
    .map_err(anyhow::Error::from)?;
    drop(permit);
    match r {
        Ok(p) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], p).into_response()),
        Err(e) => match live.failed() {
            Some(why) => Err(failed(why)),
            // Not uploaded within the hold: ask again.
            None if !live.is_placed(i) => Err(away()),
            None => Err(anyhow::anyhow!("chunk {i} of the stream: {e:#}").into()),
        },
    }
}

/// `GET /api/v1/chunks/{hash}`: one chunk of the task's image, as a zstd frame.
#[utoipa::path(get, path = "/chunks/{hash}", tag = "agent", summary = "Agent: one chunk of its task's image by BLAKE3 hash (a zstd frame)",
    params(("hash" = String, Path, description = "BLAKE3, hex")),
    responses((status = 200, description = "the chunk", content_type = "application/zstd"), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn chunk(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    UrlPath(hash): UrlPath<String>,
) -> ApiResult<Response> {
    let h = Hash::from_hex(&hash)
        .ok_or_else(|| ApiError::bad_request(format!("{hash:?} is not a BLAKE3 hash")))?;
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    let img = s.deployer.image(&d.image_id).await?;
    let mut len = img.lens.get(&h).copied();
    if len.is_none() {
        // A machine with a smaller disk writes the image fitted to it.
        for id in s.deployer.fitted_of(&d.image_id) {
            len = s.deployer.image(&id).await?.lens.get(&h).copied();
            if len.is_some() {
                break;
            }
        }
    }
    let len = len.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("chunk {hash} is not in this task's image"),
        )
    })?;
    // A slot is held until the chunk is sent: 40 agents fetching 4 chunks each would
    // otherwise hold 160 chunks in memory while a shared link drains them.
    let permit = s
        .deployer
        .chunk_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(anyhow::Error::from)?;
    let frame = axum::body::Bytes::from(s.deployer.chunk_frame(h, len).await?);
    // The permit is dropped when the stream ends, after the frame was written out.
    let body = futures_util::stream::unfold((Some(frame), permit), |(frame, permit)| async move {
        frame.map(|f| (Ok::<_, Infallible>(f), (None, permit)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/zstd")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// The counters of an agent's report, as the database keeps them.
fn task_progress(c: api::WorkCounters, rate_bps: u64) -> TaskProgress {
    let n = |v: u64| v.min(i64::MAX as u64) as i64;
    TaskProgress {
        bytes_done: n(c.bytes_done),
        rate_bps: n(rate_bps),
        multicast_chunks: n(c.multicast_chunks),
        unicast_chunks: n(c.unicast_chunks),
        kept_chunks: n(c.kept_chunks),
        swarm_bytes: n(c.swarm_bytes),
    }
}

/// `POST /api/v1/agent/progress`.
#[utoipa::path(post, path = "/agent/progress", tag = "agent",
    summary = "Agent: progress (state receiving|verifying|seeding|personalizing, bytes_done, rate_bps, chunk counts)", request_body = api::ProgressReport,
    responses((status = 200, description = "recorded", body = api::StateReply), (status = 400, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn progress(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    body: Result<Json<api::ProgressReport>, JsonRejection>,
) -> ApiResult<Json<api::StateReply>> {
    let Json(p) = body?;
    if !matches!(
        p.state,
        api::TaskState::Receiving
            | api::TaskState::Verifying
            | api::TaskState::Seeding
            | api::TaskState::Personalizing
    ) {
        return Err(ApiError::bad_request(format!(
            "state {:?}: receiving, verifying, seeding or personalizing (the result ends a task)",
            p.state.as_str()
        )));
    }
    let total = match p.bytes_total {
        Some(n) if n > 0 && t.bytes_total == 0 => {
            let n = n.min(i64::MAX as u64) as i64;
            s.db.deployments().set_task_total(&t.id, n).await?;
            n
        }
        _ => t.bytes_total,
    };
    if p.bytes_done > total.max(0) as u64 {
        return Err(ApiError::bad_request(format!(
            "bytes_done {} is outside 0..={total}",
            p.bytes_done
        )));
    }
    if !s
        .db
        .deployments()
        .task_progress(
            &t.id,
            p.state.as_str(),
            task_progress(p.counters(), p.rate_bps),
        )
        .await?
    {
        let t = s.db.deployments().task(&t.id).await?;
        return Err(task_over(&t));
    }
    s.deployer.changed(&t.deployment_id);
    Ok(Json(api::StateReply { state: p.state }))
}

/// 410 naming how the task ended.
pub(crate) fn task_over(t: &Task) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        format!(
            "task {} is over: {}{}",
            t.id,
            t.state,
            t.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    )
}

/// `POST /api/v1/agent/result`: the task is done, or failed with a reason.
#[utoipa::path(post, path = "/agent/result", tag = "agent", summary = "Agent: the task's end (ok, reason, bytes_done, chunk counts)",
    request_body = api::ResultReport,
    responses((status = 200, description = "recorded", body = api::StateReply), (status = 400, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn result(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    body: Result<Json<api::ResultReport>, JsonRejection>,
) -> ApiResult<Json<api::StateReply>> {
    let Json(r) = body?;
    if r.ok {
        let d = s.db.deployments().deployment(&t.deployment_id).await?;
        if d.kind == api::TaskKind::Capture && d.image_id.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "task {}: a capture is done once its image is committed \
                     (POST /agent/capture/commit)",
                    t.id
                ),
            ));
        }
    }
    let state = if r.ok {
        api::TaskState::Done
    } else {
        api::TaskState::Failed
    };
    let reason = match (&r.reason, r.ok) {
        (Some(why), _) => Some(why.chars().take(2000).collect::<String>()),
        (None, false) => Some("the agent gave no reason".to_string()),
        (None, true) => None,
    };
    let p = r.counters.map(|c| {
        let mut p = task_progress(c, 0);
        p.bytes_done = p.bytes_done.clamp(0, t.bytes_total.max(0));
        p
    });
    if r.personalized.len() > 100 || r.personalized.iter().any(|l| l.len() > 500) {
        return Err(ApiError::bad_request(
            "personalized: at most 100 lines of at most 500 bytes",
        ));
    }
    if !s
        .db
        .deployments()
        .finish_task(&t.id, state.as_str(), reason.as_deref(), p, &r.personalized)
        .await?
    {
        let t = s.db.deployments().task(&t.id).await?;
        return Err(task_over(&t));
    }
    s.db.audit(
        &format!("machine:{}", t.mac),
        &format!("task.{state}"),
        &format!(
            "task {} of deployment {}{}",
            t.id,
            t.deployment_id,
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    )
    .await?;
    s.deployer.changed(&t.deployment_id);
    if !r.ok {
        if let Some(st) = s.deployer.stream_by_capture(&t.deployment_id) {
            let why = reason.unwrap_or_default();
            s.deployer.stream_failed(&st, &why).await;
        }
    }
    if s.deployer.stream_of(&t.deployment_id).is_some() {
        // A stream whose deployments are both over no longer holds the store.
        s.deployer.prune_streams().await;
    }
    Ok(Json(api::StateReply { state }))
}
