//! Schedules over the API (`/api/v1/schedules`: list, create, show, remove) and the daemon's
//! [`Host`] for the scheduler: its database, its deployer and its lab interface.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use proto::api::{self, ErrorBody};

use crate::serve::boot::wol::Waker;
use crate::serve::db::{now_ms, Db};
use crate::serve::deployments::service::{DeployRequest, Deployer};
use crate::serve::schedules::repo::NewSchedule;
use crate::serve::schedules::service::{
    check_timing, parse_cron, show_time, Fired, Host, Schedule, Settings, When,
};
use crate::serve::web::api::{check_name, Actor, ApiError, ApiResult, Shared};

/// The scheduler's host in the daemon.
pub(crate) struct ServerHost {
    pub(crate) db: Db,
    pub(crate) deployer: Arc<Deployer>,
    pub(crate) waker: Arc<Waker>,
}

fn actor(s: &Schedule) -> String {
    format!("schedule:{}", s.name)
}

fn targets(s: &Schedule) -> Vec<String> {
    s.targets.split(',').map(str::to_string).collect()
}

impl ServerHost {
    /// Wakes the schedule's machines; says what it did.
    async fn wake(&self, s: &Schedule) -> anyhow::Result<String> {
        let macs = self
            .deployer
            .resolve_targets(&targets(s))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let to = self
            .waker
            .wake(&actor(s), &macs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(format!("woke {} machine(s) via {to}", macs.len()))
    }
}

impl Host for ServerHost {
    fn now_ms(&self) -> i64 {
        now_ms()
    }

    async fn schedules(&self) -> anyhow::Result<Vec<Schedule>> {
        Ok(self.db.schedules().schedules().await?)
    }

    async fn claim(&self, s: &Schedule, due_ms: i64, outcome: &str) -> anyhow::Result<bool> {
        // Of several servers on one database, the one its machines talk to runs it (its
        // wake-up and stream reach their network); any server when that one is gone.
        let macs = self
            .deployer
            .resolve_targets(&targets(s))
            .await
            .map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        if let Some(site) = self.db.servers().site_of(&macs).await? {
            if site != self.deployer.owner {
                return Ok(false);
            }
        }
        Ok(self
            .db
            .schedules()
            .claim_run(&s.id, due_ms, &self.deployer.owner, outcome)
            .await?)
    }

    async fn finish(
        &self,
        s: &Schedule,
        due_ms: i64,
        outcome: &str,
        detail: &str,
        deployment: Option<&str>,
    ) -> anyhow::Result<()> {
        self.db
            .schedules()
            .finish_run(&s.id, due_ms, outcome, detail, deployment)
            .await?;
        self.db
            .audit(
                &actor(s),
                &format!("schedule.{outcome}"),
                &format!("due {}: {detail}", show_time(due_ms)),
            )
            .await
    }

    async fn fire(&self, s: &Schedule, start_at_ms: Option<i64>) -> anyhow::Result<Fired> {
        if s.action == "wake" {
            return Ok(Fired {
                detail: self.wake(s).await?,
                deployment: None,
            });
        }
        let multicast = s.transport == "multicast";
        let (d, busy) = self
            .deployer
            .create_skipping_busy(
                DeployRequest {
                    image: s.image.clone().unwrap_or_default(),
                    targets: targets(s),
                    transport: s.transport,
                    fallback: s.fallback,
                    min_machines: s.min_machines,
                    max_wait: s.max_wait_ms.map(|ms| Duration::from_millis(ms as u64)),
                    start_at_ms: start_at_ms.filter(|_| multicast),
                    then_action: s.then_action,
                    personalize: s.personalize.clone(),
                    layout: s.layout,
                },
                &actor(s),
            )
            .await
            .map_err(|e| anyhow::anyhow!("no deployment: {e}"))?;
        let stream = match start_at_ms {
            Some(at) if multicast => format!(", its stream at {}", show_time(at)),
            _ => String::new(),
        };
        // A wake lead of 0 means no wake-up: the machines are expected to be on.
        let woke = if s.wake_lead_ms == Some(0) {
            "no wake-up (wake lead 0)".to_string()
        } else {
            match self.wake(s).await {
                Ok(w) => w,
                Err(e) => format!("machines not woken: {e:#}"),
            }
        };
        let skipped = if busy.is_empty() {
            String::new()
        } else {
            format!("; left out, busy: {}", busy.join(", "))
        };
        Ok(Fired {
            detail: format!(
                "deployment {} of {} over {}{stream}; {woke}{skipped}",
                d.id, d.image_name, d.transport
            ),
            deployment: Some(d.id),
        })
    }
}

/// Due times a schedule's view lists.
const NEXT_RUNS: usize = 5;

/// A stored wire value (a schedule's action, transport, ...) as its enum.
/// A schedule as the admin sees it: with its next due and fire times and its newest runs.
async fn view(s: &Shared, sc: &Schedule, runs: i64) -> ApiResult<api::Schedule> {
    let lead = sc.lead_ms(s.scheduler.settings.default_lead_ms);
    let base = sc
        .last_due_ms
        .unwrap_or(sc.created_ms)
        .max(sc.created_ms)
        .max(now_ms());
    let next = sc.when().ok().and_then(|w| w.next_after(base));
    // The next few due times, to check an expression against.
    let mut next_runs = Vec::new();
    if let (Ok(w), Some(first)) = (sc.when(), next) {
        let mut t = first;
        next_runs.push(show_time(t));
        while next_runs.len() < NEXT_RUNS {
            match w.next_after(t) {
                Some(n) if n > t => t = n,
                _ => break,
            }
            next_runs.push(show_time(t));
        }
    }
    Ok(api::Schedule {
        id: sc.id.clone(),
        name: sc.name.clone(),
        cron: sc.cron.clone(),
        at_ms: sc.at_ms,
        action: sc.action,
        image: sc.image.clone(),
        targets: sc.targets.clone(),
        transport: sc.transport,
        fallback: sc.fallback,
        min_machines: sc.min_machines,
        max_wait_ms: sc.max_wait_ms,
        then_action: sc.then_action,
        personalize: sc.personalize.clone(),
        layout: sc.layout,
        wake_lead_ms: lead,
        created_by: sc.created_by.clone(),
        created_ms: sc.created_ms,
        last_due_ms: sc.last_due_ms,
        next_due_ms: next,
        next_due: next.map(show_time),
        next_runs,
        next_fire_ms: next.map(|n| n - lead),
        runs: s
            .db
            .schedules()
            .schedule_runs(&sc.id, runs)
            .await?
            .into_iter()
            .map(|r| api::ScheduleRun {
                due_ms: r.due_ms,
                server: r.server,
                outcome: r.outcome,
                detail: r.detail,
                deployment_id: r.deployment_id,
                at_ms: r.at_ms,
            })
            .collect(),
    })
}

#[utoipa::path(get, path = "/schedules", tag = "schedules", summary = "Schedules with their next due and fire times and newest runs",
    responses((status = 200, description = "schedules", body = [api::Schedule])))]
pub(crate) async fn list(State(s): State<Shared>) -> ApiResult<Json<Vec<api::Schedule>>> {
    let mut out = Vec::new();
    for sc in s.db.schedules().schedules().await? {
        out.push(view(&s, &sc, 5).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/schedules/{name}", tag = "schedules", summary = "One schedule with its next due time and its runs (newest first)", params(("name" = String, Path, description = "name or id")),
    responses((status = 200, description = "the schedule", body = api::Schedule), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<Shared>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<api::Schedule>> {
    let sc = s.db.schedules().schedule(&key).await?;
    Ok(Json(view(&s, &sc, 50).await?))
}

#[utoipa::path(delete, path = "/schedules/{name}", tag = "schedules", summary = "Remove a schedule (a deployment it created goes on)", params(("name" = String, Path, description = "name or id")),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let sc = s.db.schedules().remove_schedule(&key).await?;
    s.db.audit(&actor.0, "schedule.remove", &sc.name).await?;
    s.scheduler.changed();
    Ok(StatusCode::NO_CONTENT)
}

fn duration(what: &str, v: Option<&str>) -> ApiResult<Option<i64>> {
    v.map(|t| {
        transport::fmt::parse_duration(t)
            .map(|d| d.as_millis() as i64)
            .map_err(|e| ApiError::bad_request(format!("{what} {t:?}: {e}")))
    })
    .transpose()
}

/// A schedule's body checked: what a run will need exists and the timing can fire.
struct Checked {
    when: When,
    action: api::ScheduleAction,
    /// Comma-separated.
    targets: String,
    max_wait_ms: Option<i64>,
    wake_lead_ms: Option<i64>,
}

async fn check_body(s: &Shared, b: &api::NewSchedule) -> ApiResult<Checked> {
    check_name("schedule name", &b.name)?;
    let when = match (&b.cron, &b.at) {
        (Some(c), None) => When::Cron(Box::new(parse_cron(c).map_err(ApiError::bad_request)?)),
        (None, Some(t)) => When::At(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| ApiError::bad_request(format!("at {t:?}: {e} (use RFC 3339)")))?
                .timestamp_millis(),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "give either \"cron\" (a cron expression) or \"at\" (a time), not both",
            ))
        }
    };
    let action = b.action.unwrap_or(if b.image.is_some() {
        api::ScheduleAction::Deploy
    } else {
        api::ScheduleAction::Wake
    });
    let targets: Vec<String> = b.to.iter().map(|t| t.trim().to_string()).collect();
    let max_wait_ms = duration("max_wait", b.max_wait.as_deref())?;
    let wake_lead_ms = duration("wake_lead", b.wake_lead.as_deref())?;
    match action {
        api::ScheduleAction::Deploy => {
            let image = b
                .image
                .clone()
                .ok_or_else(|| ApiError::bad_request("a deploy schedule needs an \"image\""))?;
            // Everything a run will need, checked now (the image and machines may still
            // change before it runs; the run says so then).
            s.deployer
                .check(&DeployRequest {
                    image,
                    targets: targets.clone(),
                    transport: b.transport,
                    fallback: b.fallback,
                    min_machines: b.min_machines,
                    max_wait: max_wait_ms.map(|ms| Duration::from_millis(ms as u64)),
                    start_at_ms: None,
                    then_action: b.then,
                    personalize: b.personalize.clone(),
                    layout: b.layout,
                })
                .await?;
        }
        api::ScheduleAction::Wake => {
            if b.image.is_some() {
                return Err(ApiError::bad_request(
                    "a wake schedule takes no image (action \"deploy\" redeploys)",
                ));
            }
            s.deployer.resolve_targets(&targets).await?;
        }
    }
    let lead = if action == api::ScheduleAction::Deploy {
        wake_lead_ms.unwrap_or(s.scheduler.settings.default_lead_ms)
    } else {
        0
    };
    check_timing(&when, lead, now_ms()).map_err(ApiError::bad_request)?;
    Ok(Checked {
        when,
        action,
        targets: targets.join(","),
        max_wait_ms,
        wake_lead_ms,
    })
}

fn new_schedule<'a>(b: &'a api::NewSchedule, c: &'a Checked, by: &'a str) -> NewSchedule<'a> {
    NewSchedule {
        name: &b.name,
        cron: b.cron.as_deref().map(str::trim),
        at_ms: match c.when {
            When::At(at) => Some(at),
            When::Cron(_) => None,
        },
        action: c.action.as_str(),
        image: b.image.as_deref(),
        targets: &c.targets,
        transport: b.transport.as_str(),
        fallback: b.fallback.as_str(),
        min_machines: b.min_machines,
        max_wait_ms: c.max_wait_ms,
        then_action: b.then.as_str(),
        wake_lead_ms: c.wake_lead_ms,
        created_by: by,
        personalize: &b.personalize,
        layout: b.layout.map(|l| l.as_str()),
    }
}

fn summary(sc: &Schedule) -> String {
    format!(
        "{} ({}): {} {}",
        sc.name,
        sc.cron
            .clone()
            .unwrap_or_else(|| sc.at_ms.map(show_time).unwrap_or_default()),
        sc.action,
        sc.targets
    )
}

#[utoipa::path(post, path = "/schedules", tag = "schedules",
    summary = "Add a schedule: a redeploy (image) or a wake-up, at cron times (server local time) or once",
    description = "A redeploy fires its wake lead before its due time: it creates the deployment (its multicast stream starts at the due time) and wakes the machines.",
    request_body = api::NewSchedule,
    responses((status = 201, description = "added", body = api::Schedule), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<api::NewSchedule>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(b) = body?;
    let c = check_body(&s, &b).await?;
    let sc =
        s.db.schedules()
            .create_schedule(&new_schedule(&b, &c, &actor.0))
            .await?;
    s.db.audit(&actor.0, "schedule.add", &summary(&sc)).await?;
    s.scheduler.changed();
    Ok((StatusCode::CREATED, Json(view(&s, &sc, 5).await?)).into_response())
}

/// `PUT /schedules/{name}`: the schedule replaced by the body (checked as a new one); it
/// fires from now on by its new timing (times already past are not run).
#[utoipa::path(put, path = "/schedules/{name}", tag = "schedules",
    summary = "Replace a schedule (checked as a new one); it fires from now on by its new timing", params(("name" = String, Path, description = "name or id")), request_body = api::NewSchedule,
    responses((status = 200, description = "the schedule", body = api::Schedule), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn replace(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::NewSchedule>, JsonRejection>,
) -> ApiResult<Json<api::Schedule>> {
    let Json(b) = body?;
    let old = s.db.schedules().schedule(&name).await?;
    let c = check_body(&s, &b).await?;
    let sc =
        s.db.schedules()
            .update_schedule(&old.id, &new_schedule(&b, &c, &old.created_by), now_ms())
            .await?;
    s.db.audit(
        &actor.0,
        "schedule.edit",
        &format!("{} -> {}", summary(&old), summary(&sc)),
    )
    .await?;
    s.scheduler.changed();
    Ok(Json(view(&s, &sc, 5).await?))
}

/// The scheduler's settings from the server's.
pub(crate) fn settings(wake_lead: Duration, grace: Duration) -> Settings {
    Settings {
        grace_ms: grace.as_millis() as i64,
        default_lead_ms: wake_lead.as_millis() as i64,
    }
}
