//! Schedules: a cron expression (croner, in the server's local time) or a one-shot time, and
//! what to do then — redeploy an image to machines and groups, or wake them.
//!
//! A scheduled redeploy *fires* its wake lead (default 5 minutes) before its due time: it
//! creates the deployment, whose multicast stream starts at the due time (or as soon as its
//! `min_machines` joined), and wakes its machines with wake-on-LAN, so they PXE-boot, find
//! their task and join before the stream starts. A wake schedule fires at its due time.
//!
//! Each due time is claimed once, through the database (`schedule_runs`): of several servers
//! sharing one PostgreSQL inventory, exactly one acts. Missed runs (the server was down):
//! the most recent due time is run late if it is less than the grace period old (default
//! 1 hour), else it is recorded as missed and logged; older ones are skipped (one run, never a
//! burst of them).
//!
//! The scheduler's loop is generic over [`Host`] (time, the database, the actions) so its
//! timing is tested with paused tokio time and no I/O; the daemon's host is in
//! [`super::api`].

use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Local, TimeZone};
use proto::api::{Fallback, ScheduleAction, Then, Transport};
use serde::Serialize;
use tracing::{info, warn};

/// A schedule as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) cron: Option<String>,
    pub(crate) at_ms: Option<i64>,
    pub(crate) action: ScheduleAction,
    pub(crate) image: Option<String>,
    pub(crate) targets: String,
    pub(crate) transport: Transport,
    /// Where a multicast deployment's stragglers finish.
    pub(crate) fallback: Fallback,
    pub(crate) min_machines: Option<i64>,
    pub(crate) max_wait_ms: Option<i64>,
    pub(crate) then_action: Then,
    /// `None`: the server's default; `Some(0)`: no wake-up, fire at the due time.
    pub(crate) wake_lead_ms: Option<i64>,
    pub(crate) created_by: String,
    /// When it was created or last edited: its timing counts from then.
    pub(crate) created_ms: i64,
    /// The newest due time that was handled (run, failed or missed).
    pub(crate) last_due_ms: Option<i64>,
    /// How its deployments personalize the machines.
    pub(crate) personalize: proto::api::Personalize,
    /// How its deployments lay the image out on larger disks (None: each machine's group's
    /// choice, else grow).
    pub(crate) layout: Option<proto::api::Layout>,
}

impl Schedule {
    /// How long before its due time the schedule fires.
    pub(crate) fn lead_ms(&self, default_lead_ms: i64) -> i64 {
        if self.action == "deploy" {
            self.wake_lead_ms.unwrap_or(default_lead_ms).max(0)
        } else {
            0
        }
    }

    pub(crate) fn when(&self) -> Result<When, String> {
        match (&self.cron, self.at_ms) {
            (Some(c), None) => Ok(When::Cron(Box::new(parse_cron(c)?))),
            (None, Some(at)) => Ok(When::At(at)),
            _ => Err(format!(
                "schedule {}: needs a cron expression or a time",
                self.name
            )),
        }
    }
}

/// When a schedule is due.
#[derive(Debug, Clone)]
pub(crate) enum When {
    Cron(Box<croner::Cron>),
    At(i64),
}

/// Parses a cron expression: five fields (minute hour day month weekday), an optional sixth
/// for seconds in front, or `@daily`-style aliases.
pub(crate) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::Cron::from_str(expr.trim()).map_err(|e| format!("cron expression {expr:?}: {e}"))
}

fn local(ms: i64) -> Option<chrono::DateTime<Local>> {
    Local.timestamp_millis_opt(ms).earliest()
}

/// A time as the admin reads it: the server's local time with its offset.
pub(crate) fn show_time(ms: i64) -> String {
    local(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%:z").to_string(),
    )
}

fn span_ms(ms: i64) -> String {
    transport::fmt::span((ms.max(0) / 1000) as u64)
}

impl When {
    /// The first due time after `ms`.
    pub(crate) fn next_after(&self, ms: i64) -> Option<i64> {
        match self {
            Self::At(at) => (*at > ms).then_some(*at),
            Self::Cron(c) => c
                .find_next_occurrence(&local(ms)?, false)
                .ok()
                .map(|t| t.timestamp_millis()),
        }
    }

    /// The last due time at or before `ms`.
    pub(crate) fn last_until(&self, ms: i64) -> Option<i64> {
        match self {
            Self::At(at) => (*at <= ms).then_some(*at),
            Self::Cron(c) => c
                .find_previous_occurrence(&local(ms)?, true)
                .ok()
                .map(|t| t.timestamp_millis())
                .filter(|&t| t <= ms),
        }
    }
}

/// Checks a new schedule's timing: the time is in the future, and a redeploy's wake lead is
/// shorter than the gap between two of its runs (else runs would overlap).
pub(crate) fn check_timing(when: &When, lead_ms: i64, now: i64) -> Result<(), String> {
    match when {
        When::At(at) if *at <= now => Err(format!("time {} is in the past", show_time(*at))),
        When::At(_) => Ok(()),
        When::Cron(c) => {
            let first = when.next_after(now).ok_or_else(|| {
                format!("cron expression {:?} never fires", c.pattern.to_string())
            })?;
            let second = when.next_after(first).unwrap_or(i64::MAX);
            if lead_ms > 0 && second - first <= lead_ms {
                return Err(format!(
                    "cron expression {:?} fires every {}, not more than the wake lead of {}: \
                     choose a longer interval or a shorter wake lead",
                    c.pattern.to_string(),
                    span_ms(second - first),
                    span_ms(lead_ms),
                ));
            }
            Ok(())
        }
    }
}

/// The scheduler's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// A run missed by less than this (the server was down) is run late; one missed by more
    /// is recorded as missed.
    pub(crate) grace_ms: i64,
    /// Wake lead of redeploys that do not set their own.
    pub(crate) default_lead_ms: i64,
}

/// What the API shares with the running scheduler: its settings, and the signal that the
/// schedules changed (it then recomputes its next due time at once).
pub(crate) struct Scheduler {
    pub(crate) settings: Settings,
    changed: Arc<tokio::sync::Notify>,
}

impl Scheduler {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Tells the scheduler that a schedule was added, changed or removed.
    pub(crate) fn changed(&self) {
        self.changed.notify_one();
    }

    /// The signal [`run`] waits on.
    pub(crate) fn signal(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }
}

/// Default wake lead: time for a lab PC to power on, PXE-boot and join.
pub(crate) const DEFAULT_WAKE_LEAD: Duration = Duration::from_secs(300);
/// Default grace period for missed runs.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What a fired schedule did.
pub(crate) struct Fired {
    pub(crate) detail: String,
    pub(crate) deployment: Option<String>,
}

/// Everything the scheduler needs from the world.
pub(crate) trait Host: Send + Sync + 'static {
    /// Wall-clock time, Unix milliseconds.
    fn now_ms(&self) -> i64;
    fn schedules(&self) -> impl Future<Output = anyhow::Result<Vec<Schedule>>> + Send;
    /// Inserts the run row of `(schedule, due)`; false when it was already there.
    fn claim(
        &self,
        s: &Schedule,
        due_ms: i64,
        outcome: &str,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Records how a claimed run ended.
    fn finish(
        &self,
        s: &Schedule,
        due_ms: i64,
        outcome: &str,
        detail: &str,
        deployment: Option<&str>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Fires a schedule for its due time: creates the deployment and wakes its machines, or
    /// wakes them. `start_at_ms`: when a redeploy's stream starts (`None`: it is late, start
    /// by the deployment's usual policy).
    fn fire(
        &self,
        s: &Schedule,
        start_at_ms: Option<i64>,
    ) -> impl Future<Output = anyhow::Result<Fired>> + Send;
}

/// The longest the scheduler sleeps: a changed wall clock is noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Missed due times recorded one by one after a downtime, at most (the log says the rest).
const MISSED_ROWS: usize = 10;
/// After a failed turn (the database away), try again after this.
const RETRY: Duration = Duration::from_secs(10);

/// Runs the scheduler until the task is dropped. `changed` wakes it when schedules change.
pub(crate) async fn run<H: Host>(
    host: Arc<H>,
    settings: Settings,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut handled = HashSet::new();
    loop {
        let wait = match turn(&*host, settings, &mut handled).await {
            Ok(Some(at)) => {
                Duration::from_millis((at - host.now_ms()).max(0) as u64).min(MAX_SLEEP)
            }
            Ok(None) => MAX_SLEEP,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "scheduler");
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed.notified() => {}
        }
    }
}

/// One look at every schedule: fires what is due, records what was missed. Returns when
/// the next one fires.
async fn turn<H: Host>(
    host: &H,
    settings: Settings,
    handled: &mut HashSet<(String, i64)>,
) -> anyhow::Result<Option<i64>> {
    let mut next: Option<i64> = None;
    for s in host.schedules().await? {
        let when = match s.when() {
            Ok(w) => w,
            Err(e) => {
                warn!(schedule = %s.name, "{e}");
                continue;
            }
        };
        let lead = s.lead_ms(settings.default_lead_ms);
        // An edited schedule counts from its edit (created_ms), not from its older runs.
        let mut base = s.last_due_ms.unwrap_or(s.created_ms).max(s.created_ms);
        let now = host.now_ms();
        if let Some(first) = when.next_after(base).filter(|&d| d - lead <= now) {
            // The newest due time already past, else the coming one.
            let due = match when.last_until(now) {
                Some(p) if p >= first => p,
                _ => first,
            };
            if !handled.contains(&(s.id.clone(), due)) {
                run_one(host, settings, &s, first, due, now).await?;
                handled.insert((s.id.clone(), due));
            }
            base = due;
        }
        if let Some(n) = when.next_after(base) {
            let fire = (n - lead).max(now);
            next = Some(next.map_or(fire, |x| x.min(fire)));
        }
    }
    Ok(next)
}

/// Claims and fires (or records as missed) one due time of a schedule.
async fn run_one<H: Host>(
    host: &H,
    settings: Settings,
    s: &Schedule,
    first: i64,
    due: i64,
    now: i64,
) -> anyhow::Result<()> {
    let at = show_time;
    let late = now - due;
    if late > settings.grace_ms {
        if host.claim(s, due, "missed").await? {
            let why = format!(
                "missed: due at {}, the server was not running; {} late is past the grace \
                 period of {}",
                at(due),
                span_ms(late),
                span_ms(settings.grace_ms),
            );
            warn!(schedule = %s.name, "{why}");
            host.finish(s, due, "missed", &why, None).await?;
        }
        return Ok(());
    }
    if !host.claim(s, due, "running").await? {
        return Ok(()); // another server has it
    }
    if first < due {
        // Older due times are not made up for: the newest run stands for them.
        warn!(schedule = %s.name, "runs due from {} until before {} were missed while the server was not running; running the newest", at(first), at(due));
        let mut d = Some(first);
        for _ in 0..MISSED_ROWS {
            let Some(t) = d.filter(|&t| t < due) else {
                break;
            };
            if host.claim(s, t, "missed").await? {
                let why = format!(
                    "missed: the server was not running; the run due at {} stands for it",
                    at(due)
                );
                host.finish(s, t, "missed", &why, None).await?;
            }
            d = s.when().ok().and_then(|w| w.next_after(t));
        }
    }
    let start_at = (due > now).then_some(due);
    match host.fire(s, start_at).await {
        Ok(f) => {
            info!(schedule = %s.name, due = %at(due), "{}", f.detail);
            host.finish(s, due, "done", &f.detail, f.deployment.as_deref())
                .await
        }
        Err(e) => {
            let why = format!("{e:#}");
            warn!(schedule = %s.name, due = %at(due), error = %why, "schedule failed");
            host.finish(s, due, "failed", &why, None).await
        }
    }
}

#[cfg(test)]
mod tests;
