//! The pages and their forms. Pages read the API as the user; forms check the session's
//! token, call the API and go back to the page with what happened as a one-time message.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Authed;
use proto::api;
use proto::api::{
    GroupPatch, MachinePatch, NewDeployment, NewGroup, NewMachine, NewSchedule, Personalize,
    ScheduleAction, VarsPatch, Wake,
};

use crate::call::{self, Refused};
use crate::view::{bytes, duration, page, rate, redirect_with, render_page, time, Fields, Nav};
use crate::{Control, Ui};

// ---- what the API answers, as the pages read it ----

/// A machine as the pages show it: the API's [`api::Machine`], with the pages' words for it.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct Machine(api::Machine);

impl std::ops::Deref for Machine {
    type Target = api::Machine;
    fn deref(&self) -> &api::Machine {
        &self.0
    }
}

impl Machine {
    pub(crate) fn last_seen(&self) -> String {
        time(self.last_seen_ms)
    }

    pub(crate) fn disk(&self) -> String {
        let size = self.disk_size.map(|n| n.min(i64::MAX as u64) as i64);
        match (&self.disk_serial, size) {
            (Some(s), Some(n)) => format!("{} ({s})", bytes(n)),
            (None, Some(n)) => bytes(n),
            (Some(s), None) => s.clone(),
            (None, None) => "—".into(),
        }
    }

    pub(crate) fn group_name(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }

    /// Came into the inventory by its own boot (a hello while unknown).
    pub(crate) fn self_registered(&self) -> bool {
        self.registered == api::Registered::Hello
    }

    /// Said hello unknown and was never placed by an admin.
    pub(crate) fn unknown(&self) -> bool {
        self.self_registered() && self.group.is_none()
    }
}

/// A group as the API gives it.
pub(crate) use api::Group;

/// An image as the API gives it ([`api::Image`]).
pub(crate) use api::Image;

/// The pages' words for an image.
pub(crate) trait ImageShow {
    fn reference(&self) -> String;
    fn disk(&self) -> String;
    fn captured(&self) -> String;
    fn used(&self) -> String;
    fn stored(&self) -> String;
}

impl ImageShow for Image {
    fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
    fn disk(&self) -> String {
        bytes(signed(self.size))
    }
    fn captured(&self) -> String {
        time(Some(signed(self.created).saturating_mul(1000)))
    }
    fn used(&self) -> String {
        bytes(signed(self.used_bytes))
    }
    fn stored(&self) -> String {
        bytes(signed(self.stored_bytes))
    }
}

/// A task and a deployment as the API gives them ([`api::Task`], [`api::Deployment`]).
pub(crate) use api::{Deployment, Task};

/// The pages' words for a task.
pub(crate) trait TaskShow {
    fn label(&self) -> &str;
    fn rate(&self) -> String;
    fn eta(&self) -> String;
    fn done(&self) -> String;
    fn why(&self) -> &str;
}

/// Bytes as the pages count them.
fn signed(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

impl TaskShow for Task {
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.mac)
    }
    fn rate(&self) -> String {
        rate(signed(self.rate_bps))
    }
    fn eta(&self) -> String {
        self.eta_seconds.map(duration).unwrap_or_else(|| "—".into())
    }
    fn done(&self) -> String {
        format!(
            "{} of {}",
            bytes(signed(self.counters.bytes_done)),
            bytes(signed(self.bytes_total))
        )
    }
    fn why(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }
}

/// The pages' words for a deployment.
pub(crate) trait DeploymentShow {
    fn active(&self) -> bool;
    fn created(&self) -> String;
    fn started(&self) -> String;
    fn finished(&self) -> String;
    fn rate(&self) -> String;
    fn percent(&self) -> f64;
    fn states(&self) -> String;
}

impl DeploymentShow for Deployment {
    fn active(&self) -> bool {
        self.state.active()
    }
    fn created(&self) -> String {
        time(Some(self.created_ms))
    }
    fn started(&self) -> String {
        time(self.started_ms)
    }
    fn finished(&self) -> String {
        time(self.finished_ms)
    }
    fn rate(&self) -> String {
        rate(signed(self.rate_bps))
    }
    fn percent(&self) -> f64 {
        match (1000 * self.bytes_done).checked_div(self.bytes_total) {
            Some(permille) => permille as f64 / 10.0,
            None if self.active() => 0.0,
            None => 100.0,
        }
    }
    fn states(&self) -> String {
        self.task_states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A schedule as the API gives it ([`api::Schedule`]).
pub(crate) use api::Schedule;

/// The pages' words for a schedule.
pub(crate) trait ScheduleShow {
    fn when(&self) -> String;
    fn at_local(&self) -> String;
    fn cron_text(&self) -> &str;
    fn image_name(&self) -> &str;
    fn what(&self) -> String;
}

impl ScheduleShow for Schedule {
    fn when(&self) -> String {
        match (&self.cron, self.at_ms) {
            (Some(c), _) => format!("cron {c}"),
            (None, Some(at)) => format!("once at {}", time(Some(at))),
            (None, None) => "—".into(),
        }
    }
    /// The one-shot time as a `datetime-local` value (server time).
    fn at_local(&self) -> String {
        use chrono::TimeZone;
        self.at_ms
            .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
            .map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
            .unwrap_or_default()
    }
    fn cron_text(&self) -> &str {
        self.cron.as_deref().unwrap_or("")
    }
    fn image_name(&self) -> &str {
        self.image.as_deref().unwrap_or("")
    }
    fn what(&self) -> String {
        match &self.image {
            Some(i)
                if self.action == ScheduleAction::Deploy
                    && self.fallback == api::Fallback::Bittorrent =>
            {
                format!("deploy {i} over {} (stragglers: the swarm)", self.transport)
            }
            Some(i) if self.action == ScheduleAction::Deploy => {
                format!("deploy {i} over {}", self.transport)
            }
            _ => self.action.to_string(),
        }
    }
}

/// An audit entry's time as the dashboard shows it.
pub(crate) trait EntryTime {
    fn at(&self) -> String;
}

impl EntryTime for api::AuditEntry {
    fn at(&self) -> String {
        time(Some(self.at_ms))
    }
}

/// A page whose data the API refused: the message on an otherwise empty page.
/// The page made of what the API gave, or the error page saying why it refused.
fn shown<T, P: Template>(
    nav: Nav,
    data: Result<T, Refused>,
    make: impl FnOnce(Nav, T) -> P,
) -> Response {
    match data {
        Ok(d) => {
            let flash = nav.flash.is_some();
            render_page(flash, &make(nav, d))
        }
        Err(e) => failed(nav, e),
    }
}

fn failed(nav: Nav, e: Refused) -> Response {
    let p = ErrorPage {
        nav,
        message: e.message,
    };
    (e.status, page(&p.nav, &p)).into_response()
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    message: String,
}

/// After a form: back to `to`, saying what the API did or why it refused.
fn after(to: &str, r: Result<Value, Refused>, ok: impl FnOnce(&Value) -> String) -> Response {
    match r {
        Ok(v) => redirect_with(to, "ok", &ok(&v)),
        Err(e) => redirect_with(to, "error", &e.message),
    }
}

macro_rules! checked {
    ($authed:expr, $form:expr) => {
        if !$authed.allows(&$form) {
            return crate::auth::forbidden();
        }
    };
}

// ---- overview ----

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    machines: usize,
    busy: usize,
    unknown: usize,
    images: usize,
    active: Vec<Deployment>,
    recent: Vec<Deployment>,
}

pub(crate) async fn overview<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("overview", &headers);
    let c = &ui.control;
    let data = async {
        let machines: Vec<Machine> = call::get(c, a.user(), "/machines").await?;
        let images: Vec<Image> = call::get(c, a.user(), "/images").await?;
        let deployments: Vec<Deployment> = call::get(c, a.user(), "/deployments?limit=10").await?;
        Ok::<_, Refused>((machines, images, deployments))
    };
    shown(nav, data.await, |nav, (machines, images, deployments)| {
        let (active, recent) = deployments
            .into_iter()
            .partition(|d: &Deployment| d.active());
        OverviewPage {
            machines: machines.len(),
            busy: machines
                .iter()
                .filter(|m| m.state == api::MachineState::Deploying)
                .count(),
            unknown: machines.iter().filter(|m| m.unknown()).count(),
            images: images.len(),
            active,
            recent,
            nav,
        }
    })
}

// ---- machines ----

#[derive(Template)]
#[template(path = "machines.html")]
struct MachinesPage {
    nav: Nav,
    machines: Vec<Machine>,
    groups: Vec<Group>,
}

pub(crate) async fn machines<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("machines", &headers);
    let c = &ui.control;
    let data = async {
        let machines: Vec<Machine> = call::get(c, a.user(), "/machines").await?;
        let groups: Vec<Group> = call::get(c, a.user(), "/groups").await?;
        Ok::<_, Refused>((machines, groups))
    };
    shown(nav, data.await, |nav, (machines, groups)| MachinesPage {
        nav,
        machines,
        groups,
    })
}

/// A machine's fields from a form: only those given (an empty one clears it).
/// A new machine's API body from its form.
fn new_machine(f: &Fields) -> NewMachine {
    NewMachine {
        mac: f.text("mac").unwrap_or_default(),
        name: f.text("name"),
        group: f.text("group"),
        ip: f.text("ip"),
        disk: f.text("disk"),
    }
}

/// A machine's changes from its form: a field the form has and left empty clears it (the
/// name, which cannot be cleared, stays).
fn machine_patch(f: &Fields) -> Result<MachinePatch, String> {
    let field = |key: &str| f.get(key).map(|_| f.text(key));
    Ok(MachinePatch {
        name: f.text("name"),
        group: field("group"),
        ip: field("ip"),
        disk: field("disk"),
        vars: vars_patch(f)?,
    })
}

/// The variables of a form's `vars` box (`KEY=VALUE`, a line each): each one set, and each of
/// `vars_before` (the keys the page showed, comma-separated) no longer there removed.
fn vars_patch(f: &Fields) -> Result<Option<VarsPatch>, String> {
    let Some(text) = f.get("vars") else {
        return Ok(None);
    };
    let mut patch = VarsPatch::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("variables: {line:?} is not KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        proto::template::check_var(k, v)?;
        patch.insert(k.to_string(), Some(v.to_string()));
    }
    for k in f.get("vars_before").unwrap_or("").split(',') {
        if !k.is_empty() && !patch.contains_key(k) {
            patch.insert(k.to_string(), None);
        }
    }
    Ok(Some(patch))
}

/// Variables as the pages show them: `KEY=VALUE` lines, and the keys for `vars_before`.
pub(crate) trait VarsShow {
    fn vars_text(&self) -> String;
    fn vars_keys(&self) -> String;
}

impl VarsShow for proto::template::Vars {
    fn vars_text(&self) -> String {
        self.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
    fn vars_keys(&self) -> String {
        self.keys().cloned().collect::<Vec<_>>().join(",")
    }
}

/// A deployment's (or schedule's) personalization from its form: on unless "personalize" is
/// `off`, with the hostname template if one is given.
fn personalize(f: &Fields) -> Result<Personalize, String> {
    // Placed files are set through the API and the CLI; an edit form carries them over.
    let files = match f.text("personalize_files") {
        Some(j) => serde_json::from_str(&j).map_err(|e| format!("files to place: {e}"))?,
        None => Vec::new(),
    };
    Ok(Personalize {
        enabled: f.get("personalize") != Some("off"),
        hostname: f.text("hostname"),
        files,
        first_boot: f
            .get("first_boot")
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.replace("\r\n", "\n")),
        keep_network_first: match f.get("keep_network_first") {
            Some("on") => Some(true),
            Some("off") => Some(false),
            _ => None,
        },
    })
}

/// A personalization as the schedule page carries it over.
pub(crate) trait PersonalizeShow {
    fn files_json(&self) -> String;
}

impl PersonalizeShow for Personalize {
    fn files_json(&self) -> String {
        if self.files.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.files).expect("files serialize")
        }
    }
}

pub(crate) async fn add_machine<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let body = call::json(&new_machine(&f));
    let r = call::api(&ui.control, a.user(), Method::POST, "/machines", Some(body)).await;
    after("/machines", r, |v| {
        format!("machine {} added", v["name"].as_str().unwrap_or("?"))
    })
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePage {
    nav: Nav,
    m: Machine,
    groups: Vec<Group>,
}

pub(crate) async fn machine<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    let nav = a.nav("machines", &headers);
    let c = &ui.control;
    let data = async {
        let m: Machine = call::get(c, a.user(), &format!("/machines/{mac}")).await?;
        let groups: Vec<Group> = call::get(c, a.user(), "/groups").await?;
        Ok::<_, Refused>((m, groups))
    };
    shown(nav, data.await, |nav, (m, groups)| MachinePage {
        nav,
        m,
        groups,
    })
}

pub(crate) async fn save_machine<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(mac): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/machines/{mac}");
    let body = match machine_patch(&f) {
        Ok(p) => call::json(&p),
        Err(e) => return redirect_with(&path, "error", &e),
    };
    match call::api(&ui.control, a.user(), Method::PATCH, &path, Some(body)).await {
        Ok(v) => redirect_with(
            "/machines",
            "ok",
            &format!("machine {} saved", v["name"].as_str().unwrap_or(&mac)),
        ),
        Err(e) => redirect_with(&path, "error", &e.message),
    }
}

pub(crate) async fn wake_machine<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(mac): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let body = call::json(&Wake {
        macs: vec![mac.clone()],
        group: None,
    });
    let r = call::api(&ui.control, a.user(), Method::POST, "/wake", Some(body)).await;
    after("/machines", r, |v| {
        format!(
            "wake-on-LAN sent to {mac} (via {})",
            v["to"].as_str().unwrap_or("?")
        )
    })
}

pub(crate) async fn delete_machine<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(mac): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/machines/{mac}");
    let r = call::api(&ui.control, a.user(), Method::DELETE, &path, None).await;
    after("/machines", r, |_| format!("machine {mac} removed"))
}

// ---- groups ----

#[derive(Template)]
#[template(path = "groups.html")]
struct GroupsPage {
    nav: Nav,
    groups: Vec<Group>,
}

pub(crate) async fn groups<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("groups", &headers);
    shown(
        nav,
        call::get(&ui.control, a.user(), "/groups").await,
        |nav, groups| GroupsPage { nav, groups },
    )
}

pub(crate) async fn add_group<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let name = f.text("name").unwrap_or_default();
    let body = call::json(&NewGroup { name: name.clone() });
    let r = call::api(&ui.control, a.user(), Method::POST, "/groups", Some(body)).await;
    after("/groups", r, |_| format!("group {name} added"))
}

pub(crate) async fn wake_group<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(name): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let body = call::json(&Wake {
        macs: Vec::new(),
        group: Some(name.clone()),
    });
    let r = call::api(&ui.control, a.user(), Method::POST, "/wake", Some(body)).await;
    after("/groups", r, |v| {
        let n = v["woken"].as_array().map_or(0, Vec::len);
        format!("wake-on-LAN sent to the {n} machine(s) of {name}")
    })
}

/// A group's variables from its form.
pub(crate) async fn save_group_vars<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(name): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let vars = match vars_patch(&f) {
        Ok(v) => v,
        Err(e) => return redirect_with("/groups", "error", &e),
    };
    let body = call::json(&GroupPatch {
        vars,
        keep_network_first: Some(f.get("keep_network_first") == Some("on")),
        uefi_loader: Some(
            f.get("uefi_loader")
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        ),
        layout: Some(match layout_choice(&f) {
            Ok(l) => l,
            Err(e) => return redirect_with("/groups", "error", &e),
        }),
    });
    let path = format!("/groups/{name}");
    let r = call::api(&ui.control, a.user(), Method::PATCH, &path, Some(body)).await;
    after("/groups", r, |_| format!("group {name} saved"))
}

pub(crate) async fn delete_group<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(name): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/groups/{name}");
    let r = call::api(&ui.control, a.user(), Method::DELETE, &path, None).await;
    after("/groups", r, |_| format!("group {name} removed"))
}

// ---- images ----

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesPage {
    nav: Nav,
    images: Vec<Image>,
    /// Where the images are and what the server read from there (none: not shown).
    store: Option<String>,
    cache: Option<String>,
}

/// The images page's words for the store and its cache.
fn store_lines(s: &api::StoreInfo) -> (String, Option<String>) {
    let place = format!(
        "{}{}",
        s.location,
        if s.encrypted {
            ", encrypted at rest"
        } else {
            ""
        }
    );
    let cache = s.cache.as_ref().map(|c| {
        let held = if c.cache_max_bytes == 0 {
            "no local cache".to_string()
        } else {
            format!(
                "local cache {} of {} ({} chunks), {} reads answered by it",
                bytes(signed(c.cache_bytes)),
                bytes(signed(c.cache_max_bytes)),
                c.cache_files,
                c.cache_hits
            )
        };
        let damaged = match c.damaged_in_cache {
            0 => String::new(),
            n => format!("; {n} damaged cached copies dropped and read again"),
        };
        format!(
            "Since this server started: {} chunks ({}) read from the store; {held}{damaged}.",
            c.store_reads,
            bytes(signed(c.store_bytes))
        )
    });
    (place, cache)
}

pub(crate) async fn images<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("images", &headers);
    let (store, cache) = match call::get::<_, api::StoreInfo>(&ui.control, a.user(), "/store").await
    {
        Ok(s) => {
            let (place, cache) = store_lines(&s);
            (Some(place), cache)
        }
        Err(_) => (None, None),
    };
    shown(
        nav,
        call::get(&ui.control, a.user(), "/images").await,
        |nav, images| ImagesPage {
            nav,
            images,
            store,
            cache,
        },
    )
}

pub(crate) async fn verify_image<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(reference): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/images/{reference}/verify");
    let r = call::api(&ui.control, a.user(), Method::POST, &path, None)
        .await
        .and_then(|v| {
            serde_json::from_value::<api::ImageVerified>(v).map_err(|e| Refused {
                status: axum::http::StatusCode::BAD_GATEWAY,
                message: format!("the API's answer: {e}"),
            })
        });
    match r {
        Ok(v) if v.ok => redirect_with(
            "/images",
            "ok",
            &format!("{reference}: all {} chunks verified", v.chunks),
        ),
        Ok(v) => {
            let first = v.bad.first().map_or(String::new(), |b| {
                format!(
                    "; first: chunk {} at disk offset {}: {}",
                    b.hash, b.disk_offset, b.error
                )
            });
            redirect_with(
                "/images",
                "error",
                &format!(
                    "{reference}: {} of {} chunks are bad{first}",
                    v.bad.len(),
                    v.chunks
                ),
            )
        }
        Err(e) => redirect_with("/images", "error", &e.message),
    }
}

// ---- deployments ----

#[derive(Template)]
#[template(path = "deployments.html")]
struct DeploymentsPage {
    nav: Nav,
    deployments: Vec<Deployment>,
    images: Vec<Image>,
    groups: Vec<Group>,
    machines: Vec<Machine>,
}

pub(crate) async fn deployments<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("deployments", &headers);
    let c = &ui.control;
    let data = async {
        let deployments: Vec<Deployment> = call::get(c, a.user(), "/deployments?limit=50").await?;
        let images: Vec<Image> = call::get(c, a.user(), "/images").await?;
        let groups: Vec<Group> = call::get(c, a.user(), "/groups").await?;
        let machines: Vec<Machine> = call::get(c, a.user(), "/machines").await?;
        Ok::<_, Refused>((deployments, images, groups, machines))
    };
    shown(
        nav,
        data.await,
        |nav, (deployments, images, groups, machines)| DeploymentsPage {
            nav,
            deployments,
            images,
            groups,
            machines,
        },
    )
}

/// The targets a form names: groups and machines ticked, and any typed in.
fn targets(f: &Fields) -> Vec<String> {
    let mut to = f.all("to");
    if let Some(more) = f.text("to_more") {
        to.extend(
            more.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    to
}

pub(crate) async fn create_deployment<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let body = match deployment_body(&f) {
        Ok(b) => b,
        Err(e) => return redirect_with("/deployments", "error", &e),
    };
    let r = call::api(
        &ui.control,
        a.user(),
        Method::POST,
        "/deployments",
        Some(body),
    )
    .await;
    match r {
        Ok(v) => {
            let id = v["id"].as_str().unwrap_or_default();
            redirect_with(
                &format!("/deployments/{id}"),
                "ok",
                &format!("deployment {id} created"),
            )
        }
        Err(e) => redirect_with("/deployments", "error", &e.message),
    }
}

#[derive(Template)]
#[template(path = "deployment.html")]
struct DeploymentPage {
    nav: Nav,
    d: Deployment,
}

pub(crate) async fn deployment<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let nav = a.nav("deployments", &headers);
    shown(
        nav,
        call::get(&ui.control, a.user(), &format!("/deployments/{id}")).await,
        |nav, d| DeploymentPage { nav, d },
    )
}

/// The deployment's live view: the API's server-sent events, passed on as they come.
pub(crate) async fn deployment_events<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(id): Path<String>,
) -> Response {
    call::raw(&ui.control, a.user(), &format!("/deployments/{id}/events")).await
}

pub(crate) async fn cancel_deployment<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/deployments/{id}/cancel");
    let r = call::api(&ui.control, a.user(), Method::POST, &path, None).await;
    after(&format!("/deployments/{id}"), r, |_| {
        format!("deployment {id} cancelled")
    })
}

pub(crate) async fn start_deployment<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/deployments/{id}/start");
    let r = call::api(&ui.control, a.user(), Method::POST, &path, None).await;
    after(&format!("/deployments/{id}"), r, |_| {
        format!("deployment {id} started")
    })
}

// ---- schedules ----

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    nav: Nav,
    schedules: Vec<Schedule>,
    images: Vec<Image>,
    groups: Vec<Group>,
}

pub(crate) async fn schedules<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("schedules", &headers);
    let c = &ui.control;
    let data = async {
        let schedules: Vec<Schedule> = call::get(c, a.user(), "/schedules").await?;
        let images: Vec<Image> = call::get(c, a.user(), "/images").await?;
        let groups: Vec<Group> = call::get(c, a.user(), "/groups").await?;
        Ok::<_, Refused>((schedules, images, groups))
    };
    shown(nav, data.await, |nav, (schedules, images, groups)| {
        SchedulesPage {
            nav,
            schedules,
            images,
            groups,
        }
    })
}

/// A `datetime-local` value (server time) as RFC 3339.
fn local_time(t: &str) -> Option<String> {
    use chrono::TimeZone;
    let t = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    chrono::Local
        .from_local_datetime(&t)
        .earliest()
        .map(|t| t.to_rfc3339())
}

/// A choice of the form (`transport`, `then`, ...): its default when left out, an error naming
/// the choices when it is none of them.
fn choice<T: std::str::FromStr<Err = String> + Default>(
    f: &Fields,
    name: &str,
) -> Result<T, String> {
    match f.text(name) {
        None => Ok(T::default()),
        Some(v) => v.parse().map_err(|e| format!("{name} {e}")),
    }
}

/// The form's `layout`: empty for "as the machines' groups say" (or, for a group, grow).
fn layout_choice(f: &Fields) -> Result<Option<api::Layout>, String> {
    f.text("layout")
        .map(|l| l.parse().map_err(|e| format!("layout {e}")))
        .transpose()
}

/// A deployment's API body from its form.
fn deployment_body(f: &Fields) -> Result<String, String> {
    let mut body = NewDeployment {
        image: f.text("image").unwrap_or_default(),
        from: None,
        keep_as: None,
        to: targets(f),
        transport: choice(f, "transport")?,
        fallback: choice(f, "fallback")?,
        min_machines: None,
        max_wait: None,
        start_at: None,
        then: choice(f, "then")?,
        personalize: personalize(f)?,
        layout: layout_choice(f)?,
    };
    match f.get("start").unwrap_or("now") {
        "min" => {
            body.min_machines = f.text("min_machines").and_then(|n| n.parse::<i64>().ok());
            body.max_wait = f.text("max_wait");
        }
        "at" => {
            // <input type=datetime-local> gives local time without a zone: the server's.
            let at = f.text("start_at").and_then(|t| local_time(&t));
            body.start_at = Some(at.ok_or("the start time is not a date and time")?);
        }
        _ => {}
    }
    Ok(call::json(&body))
}

/// A schedule's API body from its form (create and edit alike).
fn schedule_body(f: &Fields) -> Result<String, String> {
    let action = match f.text("action") {
        None => ScheduleAction::Deploy,
        Some(a) => a.parse().map_err(|e| format!("action {e}"))?,
    };
    let mut body = NewSchedule {
        name: f.text("name").unwrap_or_default(),
        cron: None,
        at: None,
        action: Some(action),
        image: None,
        to: targets(f),
        transport: choice(f, "transport")?,
        fallback: choice(f, "fallback")?,
        min_machines: None,
        max_wait: None,
        then: choice(f, "then")?,
        wake_lead: None,
        personalize: personalize(f)?,
        layout: layout_choice(f)?,
    };
    if action == ScheduleAction::Deploy {
        body.image = f.text("image");
    }
    match (f.text("cron"), f.text("at")) {
        (Some(c), _) => body.cron = Some(c),
        (None, Some(at)) => {
            body.at = Some(local_time(&at).ok_or("the time is not a date and time")?)
        }
        (None, None) => return Err("give a cron expression or a time".into()),
    }
    Ok(call::json(&body))
}

pub(crate) async fn create_schedule<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let name = f.text("name").unwrap_or_default();
    let body = match schedule_body(&f) {
        Ok(b) => b,
        Err(e) => return redirect_with("/schedules", "error", &e),
    };
    let r = call::api(
        &ui.control,
        a.user(),
        Method::POST,
        "/schedules",
        Some(body),
    )
    .await;
    after("/schedules", r, |v| {
        let next = v["next_due"].as_str().unwrap_or("—");
        format!("schedule {name} created; next run {next}")
    })
}

#[derive(Template)]
#[template(path = "schedule.html")]
struct SchedulePage {
    nav: Nav,
    s: Schedule,
    images: Vec<Image>,
}

pub(crate) async fn schedule<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let nav = a.nav("schedules", &headers);
    let c = &ui.control;
    let data = async {
        let s: Schedule = call::get(c, a.user(), &format!("/schedules/{name}")).await?;
        let images: Vec<Image> = call::get(c, a.user(), "/images").await?;
        Ok::<_, Refused>((s, images))
    };
    shown(nav, data.await, |nav, (s, images)| SchedulePage {
        nav,
        s,
        images,
    })
}

pub(crate) async fn save_schedule<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(name): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let back = format!("/schedules/{name}");
    let body = match schedule_body(&f) {
        Ok(b) => b,
        Err(e) => return redirect_with(&back, "error", &e),
    };
    match call::api(&ui.control, a.user(), Method::PUT, &back, Some(body)).await {
        Ok(v) => redirect_with(
            "/schedules",
            "ok",
            &format!(
                "schedule {} saved; next run {}",
                v["name"].as_str().unwrap_or(&name),
                v["next_due"].as_str().unwrap_or("—")
            ),
        ),
        Err(e) => redirect_with(&back, "error", &e.message),
    }
}

pub(crate) async fn delete_schedule<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    Path(name): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    checked!(a, f);
    let path = format!("/schedules/{name}");
    let r = call::api(&ui.control, a.user(), Method::DELETE, &path, None).await;
    after("/schedules", r, |_| format!("schedule {name} removed"))
}

// ---- the audit log ----

#[derive(Template)]
#[template(path = "log.html")]
struct LogPage {
    nav: Nav,
    entries: Vec<api::AuditEntry>,
}

pub(crate) async fn log<C: Control>(
    State(ui): State<Ui<C>>,
    a: Authed,
    headers: HeaderMap,
) -> Response {
    let nav = a.nav("log", &headers);
    shown(
        nav,
        call::get(&ui.control, a.user(), "/audit?limit=500").await,
        |nav, entries| LogPage { nav, entries },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kv: &[(&str, &str)]) -> Fields {
        Fields(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_variables_box_sets_what_it_lists_and_removes_what_it_dropped() {
        let p = vars_patch(&form(&[
            ("vars", "room = b12\r\n\r\nseat=07\n"),
            ("vars_before", "room,os"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(p.get("room"), Some(&Some("b12".to_string())));
        assert_eq!(p.get("seat"), Some(&Some("07".to_string())));
        assert_eq!(p.get("os"), Some(&None), "dropped from the box: removed");
        assert_eq!(p.len(), 3);
        // A form without the box changes no variable.
        assert_eq!(vars_patch(&form(&[("name", "x")])).unwrap(), None);
        for bad in ["room", "name=x", "a b=1"] {
            assert!(vars_patch(&form(&[("vars", bad)])).is_err(), "{bad}");
        }
        let shown: proto::template::Vars = [("a".to_string(), "1".to_string())].into();
        assert_eq!(
            (shown.vars_text(), shown.vars_keys()),
            ("a=1\n".into(), "a".into())
        );
    }

    #[test]
    fn the_boot_order_choice_is_on_off_or_the_groups() {
        for (v, want) in [("on", Some(true)), ("off", Some(false)), ("", None)] {
            let p = personalize(&form(&[
                ("keep_network_first", v),
                ("first_boot", "a\r\nb"),
            ]))
            .unwrap();
            assert_eq!(p.keep_network_first, want, "{v:?}");
            assert_eq!(p.first_boot.as_deref(), Some("a\nb"));
        }
        assert_eq!(personalize(&form(&[])).unwrap().keep_network_first, None);
    }
}
