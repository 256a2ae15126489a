//! The schedules' part of the API: what a schedule does, how one is asked for, and how one
//! is shown with its runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Fallback, Layout, Personalize, Then, Transport};

wire_enum! {
    /// What a schedule does when it is due.
    ScheduleAction {
        /// Deploys its image to its machines (waking them first).
        Deploy = "deploy",
        /// Wakes its machines.
        Wake = "wake",
    }
}

/// One run (or wake-up) of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleRun {
    /// The due time it was for, Unix milliseconds.
    pub due_ms: i64,
    /// The server that ran it.
    pub server: String,
    /// `started`, `woken`, `failed`, `missed`, ...
    pub outcome: String,
    /// What happened, in words.
    pub detail: Option<String>,
    /// The deployment it made.
    pub deployment_id: Option<String>,
    /// When it ran, Unix milliseconds.
    pub at_ms: i64,
}

/// A schedule with its next due times and newest runs, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Schedule {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// A cron expression (with seconds), or
    pub cron: Option<String>,
    /// a one-shot time, Unix milliseconds.
    pub at_ms: Option<i64>,
    /// What it does.
    pub action: ScheduleAction,
    /// The image it deploys (`NAME` for the newest version, or `NAME@VERSION`).
    pub image: Option<String>,
    /// Its machines and groups, comma-separated.
    pub targets: String,
    /// How its deployments move the image.
    pub transport: Transport,
    /// Where their stragglers finish.
    pub fallback: Fallback,
    /// Machines a multicast stream waits for.
    pub min_machines: Option<i64>,
    /// How long it waits for them, milliseconds.
    pub max_wait_ms: Option<i64>,
    /// What the machines do afterwards.
    pub then_action: Then,
    /// How its deployments personalize the machines.
    #[serde(default)]
    pub personalize: Personalize,
    /// How its deployments lay the image out on larger disks (None: each machine's group's
    /// choice, else grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// How long before its due time it fires (wakes the machines), milliseconds.
    pub wake_lead_ms: i64,
    /// Who made it.
    pub created_by: String,
    /// When it was made or last edited, Unix milliseconds.
    pub created_ms: i64,
    /// The newest due time handled.
    pub last_due_ms: Option<i64>,
    /// Its next due time, Unix milliseconds, and in words (server time).
    pub next_due_ms: Option<i64>,
    /// The next due time in words.
    pub next_due: Option<String>,
    /// The next few due times, in words.
    pub next_runs: Vec<String>,
    /// When it next fires (its due time less its wake lead).
    pub next_fire_ms: Option<i64>,
    /// Its newest runs.
    pub runs: Vec<ScheduleRun>,
}

impl Schedule {
    /// Its layout's name, empty when it has none (each machine's group's choice).
    pub fn layout_name(&self) -> &'static str {
        self.layout.map_or("", Layout::as_str)
    }
}

/// `POST /api/v1/schedules` (and `PUT /api/v1/schedules/{name}`): a redeploy or a wake-up at
/// cron times or once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Its name.
    pub name: String,
    /// A cron expression (server local time), or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// one time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Deploy (the default when an image is given) or wake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ScheduleAction>,
    /// A redeploy's image (name, `NAME@VERSION` or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Machines (MAC addresses) and groups.
    pub to: Vec<String>,
    /// How a redeploy moves the image.
    #[serde(default)]
    pub transport: Transport,
    /// A multicast redeploy's stragglers.
    #[serde(default)]
    pub fallback: Fallback,
    /// A multicast redeploy starts once this many machines joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines: Option<i64>,
    /// A multicast redeploy starts after this long with whoever joined (`5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
    /// What the machines do afterwards.
    #[serde(default)]
    pub then: Then,
    /// How long before the due time a redeploy wakes the machines (`5m`; `0` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_lead: Option<String>,
    /// How a redeploy personalizes the machines.
    #[serde(default)]
    pub personalize: Personalize,
    /// How a redeploy lays the image out on larger disks (unless said: each machine's
    /// group's choice, else grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}
