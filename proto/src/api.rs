//! The typed contract between drover's agent and server: what an agent says (hello, progress,
//! result) and what the server answers (the machine, its task and how to fetch it). Plain
//! serde types and enums, no I/O; the server's handlers and the agent both use them, so a
//! field or a state is spelled in one place. The server's database rows map into these types
//! (the schema is not the wire).
//!
//! Enums are written in lower case on the wire (`"multicast"`, `"bittorrent"`, ...), as the
//! API, the CLI and the database have always spelled them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod personalize;
pub use personalize::{Personalization, Personalize, PlacedFile};
pub use schedules::{NewSchedule, Schedule, ScheduleAction, ScheduleRun};

/// Declares a wire enum: lower-case serde names, `Display` and `FromStr` with the same
/// spelling, and an error naming the choices.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$v),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }

        // The schema by hand: utoipa's derive does not see a `rename` that a macro passes in,
        // and would spell the variants as Rust does.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($s),+]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(format!(
                        "{other:?}: {}",
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

// After the macro, which it uses.
mod schedules;

wire_enum! {
    /// How a deployment moves its image to the machines.
    Transport {
        /// RaptorQ multicast from the server, with catch-up over unicast (or the swarm).
        Multicast = "multicast",
        /// A BitTorrent swarm of the machines and the server's seed.
        Bittorrent = "bittorrent",
        /// HTTP chunk fetches from the server.
        Unicast = "unicast",
    }
}

wire_enum! {
    /// Where a multicast deployment's stragglers and late joiners finish.
    Fallback {
        /// Over HTTP from the server.
        Unicast = "unicast",
        /// From the swarm of the machines that finished.
        Bittorrent = "bittorrent",
    }
}

wire_enum! {
    /// How partitions use a target disk larger than the image's.
    Layout {
        /// The last partition and its filesystem grow to the disk's end.
        Grow = "grow",
        /// The captured layout; the extra space stays unpartitioned.
        Keep = "keep",
        /// Every partition's start and size scale with the disk.
        Proportional = "proportional",
    }
}

wire_enum! {
    /// What a machine does once its task is done.
    Then {
        /// Restart into the new system.
        Reboot = "reboot",
        /// Switch off.
        Poweroff = "poweroff",
    }
}

wire_enum! {
    /// What a task does to its machine's disk.
    TaskKind {
        /// Write an image onto it.
        Restore = "restore",
        /// Read it into a new image.
        Capture = "capture",
    }
}

wire_enum! {
    /// A task's life: waiting → receiving → verifying → (seeding →) personalizing → done |
    /// failed, or cancelled.
    TaskState {
        /// Created; its agent has not reported yet.
        Waiting = "waiting",
        /// Its agent is fetching and writing.
        Receiving = "receiving",
        /// Its agent reads the disk back.
        Verifying = "verifying",
        /// Written and verified; uploading to the machines of its deployment that still lack
        /// the image (before personalizing changes the disk).
        Seeding = "seeding",
        /// Giving the restored system the machine's own identity.
        Personalizing = "personalizing",
        /// Written and verified.
        Done = "done",
        /// Ended with a reason.
        Failed = "failed",
        /// Stopped by an admin.
        Cancelled = "cancelled",
    }
}

impl TaskState {
    /// Whether the task is still going.
    pub fn active(self) -> bool {
        matches!(
            self,
            Self::Waiting | Self::Receiving | Self::Verifying | Self::Seeding | Self::Personalizing
        )
    }

    /// Whether its machine still lacks (part of) the image.
    pub fn lacks_image(self) -> bool {
        matches!(self, Self::Waiting | Self::Receiving)
    }
}

wire_enum! {
    /// A deployment's life: waiting (for its start) → running → done | failed | cancelled.
    DeploymentState {
        /// Created; a multicast stream has not started yet.
        Waiting = "waiting",
        /// Its stream started, or its machines fetch on their own.
        Running = "running",
        /// Every task is over and none failed.
        Done = "done",
        /// Every task is over and one failed at least.
        Failed = "failed",
        /// Stopped by an admin.
        Cancelled = "cancelled",
    }
}

impl DeploymentState {
    /// Whether the deployment is still going (waiting for its start, or running).
    pub fn active(self) -> bool {
        matches!(self, Self::Waiting | Self::Running)
    }
}

// The defaults a request takes when it leaves a choice out.
#[allow(clippy::derivable_impls)]
impl Default for Transport {
    fn default() -> Self {
        Self::Multicast
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Fallback {
    fn default() -> Self {
        Self::Unicast
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Layout {
    fn default() -> Self {
        Self::Grow
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Then {
    fn default() -> Self {
        Self::Reboot
    }
}

/// One of the machine's disks, as its agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HelloDisk {
    /// The device path the agent sees (`/dev/sda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The disk's serial number, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The vendor's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Removable (USB) disks are never written, nor recorded as the machine's disk.
    #[serde(default)]
    pub removable: bool,
}

/// `POST /api/v1/agent/hello`: an agent names its machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The machine's MAC address.
    pub mac: String,
    /// Its disks.
    #[serde(default)]
    pub disks: Vec<HelloDisk>,
    /// The agent's version, for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Without a task, answer when one comes or after the poll interval (a long poll).
    #[serde(default)]
    pub wait: bool,
    /// Devices whose driver asked for a firmware file the boot environment lacks, each as
    /// `DRIVER DEVICE: FILE` (from the kernel's log).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_firmware: Vec<String>,
}

/// The machine a hello named, as the inventory has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MachineRef {
    /// Its MAC address.
    pub mac: String,
    /// Its name.
    pub name: String,
    /// `hello` when this hello registered it, else how it came into the inventory.
    pub registered: Registered,
}

/// The answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HelloReply {
    /// The machine.
    pub machine: MachineRef,
    /// Its task, if it has one.
    pub task: Option<AgentTask>,
    /// A token that opens the task, for an agent that did not show a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When to say hello again, milliseconds (0: at once).
    pub poll_ms: u64,
}

/// The image a task names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageRef {
    /// The manifest's id (empty for a capture not committed yet).
    pub id: String,
    /// `NAME@VERSION` (a capture: the name it will take).
    pub name: String,
}

/// The multicast session an agent joins: announced on `group`, joined through the server's
/// API (`/api/v1/agent/session`) with the task token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MulticastAssignment {
    /// The session id in its announcements.
    pub session: u32,
    /// `ADDR:PORT` of the group.
    pub group: String,
}

/// What an agent in a swarm may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SwarmLimits {
    /// Upload limit, bits/s (none: no limit).
    pub upload_bps: Option<u64>,
    /// Peers to trade with at most.
    pub peers: usize,
}

/// A task as its agent sees it: what to write and how to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentTask {
    /// The task's id.
    pub id: String,
    /// Its deployment's id.
    pub deployment: String,
    /// Restore or capture.
    pub kind: TaskKind,
    /// Where the task is.
    pub state: TaskState,
    /// The image.
    pub image: ImageRef,
    /// How the image comes.
    pub transport: Transport,
    /// The deployment's state (a multicast deployment waits for its stream).
    pub deployment_state: DeploymentState,
    /// The live multicast session, for a multicast deployment that has one.
    pub multicast: Option<MulticastAssignment>,
    /// Where a multicast deployment's stragglers finish.
    pub fallback: Fallback,
    /// The swarm limits, for a deployment that uses a swarm.
    pub bittorrent: Option<SwarmLimits>,
    /// What the machine does afterwards.
    pub then: Then,
    /// Bytes the task amounts to.
    pub bytes_total: u64,
    /// The machine's pinned disk (`serial:...` / `size:...`), which its agent must write.
    pub disk: Option<String>,
    /// What makes the restored system this machine's (none: the image is left untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personalize: Option<Personalization>,
    /// A capture's passphrases for the disk's LUKS volumes (see [`NewCapture::luks_keys`]).
    #[serde(default, skip_serializing_if = "LuksKeys::is_empty")]
    pub luks_keys: LuksKeys,
    /// How a restore lays the image out on a disk larger than the image's.
    #[serde(default)]
    pub layout: Layout,
    /// A deployment straight from a machine's disk ([`NewDeployment::from`]). A capture:
    /// its agent posts the outline first (`POST /agent/capture/outline`) and says where each
    /// chunk goes as it uploads it (`at`). A restore: its image is that capture, in
    /// progress: the manifest is the outline until the source commits, the chunks come by
    /// multicast and `GET /agent/stream/{i}` as a hash followed by the plaintext.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

impl AgentTask {
    /// The sources of a restore, in the order the agent uses them, each taking what the ones
    /// before left: the deployment's transport first, then a multicast deployment's fallback,
    /// and unicast last, which brings whatever is still missing.
    pub fn plan(&self) -> Vec<Transport> {
        let mut plan = vec![self.transport];
        if self.transport == Transport::Multicast && self.fallback == Fallback::Bittorrent {
            plan.push(Transport::Bittorrent);
        }
        if self.transport != Transport::Unicast {
            plan.push(Transport::Unicast);
        }
        plan
    }
}

/// `GET /api/v1/agent/task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskReply {
    /// The task as it is now.
    pub task: AgentTask,
}

/// Counters of an agent's work, in a progress report and in its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkCounters {
    /// Bytes written and verified (a capture: read).
    pub bytes_done: u64,
    /// Chunks that came by multicast.
    #[serde(default)]
    pub multicast_chunks: u64,
    /// Chunks fetched over unicast (a capture: uploaded).
    #[serde(default)]
    pub unicast_chunks: u64,
    /// Chunks already on the disk (a capture: already on the server).
    #[serde(default)]
    pub kept_chunks: u64,
    /// Payload bytes from the BitTorrent swarm.
    #[serde(default)]
    pub swarm_bytes: u64,
}

/// `POST /api/v1/agent/progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// `receiving` or `verifying` (the result ends a task).
    pub state: TaskState,
    /// Bytes written and verified so far (a capture: read).
    pub bytes_done: u64,
    /// What the work amounts to: a capture's agent says (a restore's is the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Receive rate, bits/s.
    #[serde(default)]
    pub rate_bps: u64,
    /// Chunks that came by multicast.
    #[serde(default)]
    pub multicast_chunks: u64,
    /// Chunks fetched over unicast (a capture: uploaded).
    #[serde(default)]
    pub unicast_chunks: u64,
    /// Chunks already on the disk (a capture: already on the server).
    #[serde(default)]
    pub kept_chunks: u64,
    /// Payload bytes from the BitTorrent swarm.
    #[serde(default)]
    pub swarm_bytes: u64,
}

impl ProgressReport {
    /// The report's counters.
    pub fn counters(&self) -> WorkCounters {
        WorkCounters {
            bytes_done: self.bytes_done,
            multicast_chunks: self.multicast_chunks,
            unicast_chunks: self.unicast_chunks,
            kept_chunks: self.kept_chunks,
            swarm_bytes: self.swarm_bytes,
        }
    }
}

/// `POST /api/v1/agent/result`: the task is done, or failed with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultReport {
    /// Whether the task succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the agent did.
    #[serde(flatten)]
    pub counters: Option<WorkCounters>,
    /// What personalization changed, one line each (`hostname pc-07 (partition 2: Debian
    /// GNU/Linux 12)`, `new machine-id`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personalized: Vec<String>,
}

/// The answer to a progress report or a result: the task's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateReply {
    /// The task's state.
    pub state: TaskState,
}

wire_enum! {
    /// Where a machine is.
    MachineState {
        /// Known, never deployed yet.
        Registered = "registered",
        /// Its last task is done (or none is pending).
        Idle = "idle",
        /// It has a task under way.
        Deploying = "deploying",
        /// Its last task failed.
        Failed = "failed",
    }
}

wire_enum! {
    /// How a machine came into the inventory.
    Registered {
        /// Added by an admin.
        Admin = "admin",
        /// Said hello while unknown (it boots its disk until an admin gives it a task).
        Hello = "hello",
    }
}

/// A machine of the inventory, as the API returns it (`/api/v1/machines`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Machine {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Its name (the MAC until an admin names it).
    pub name: String,
    /// Its group.
    pub group: Option<String>,
    /// The disk its agent reported: serial and size in bytes.
    pub disk_serial: Option<String>,
    /// Bytes.
    pub disk_size: Option<u64>,
    /// Full DHCP's fixed address for it (a reservation).
    pub ip: Option<String>,
    /// The disk its agent writes when it has several: `serial:...` or `size:BYTES`.
    pub target_disk: Option<String>,
    /// Where it is.
    pub state: MachineState,
    /// How it came.
    pub registered: Registered,
    /// When its agent last spoke, Unix milliseconds.
    pub last_seen_ms: Option<i64>,
    /// When it was added, Unix milliseconds.
    pub created_ms: i64,
    /// Its own personalization variables (they win over its group's).
    #[serde(default)]
    pub vars: crate::template::Vars,
}

/// A group of machines, as the API returns it (`/api/v1/groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    /// Its name.
    pub name: String,
    /// How many machines it holds.
    pub machines: u64,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
    /// Personalization variables of its machines (each machine's own win).
    #[serde(default)]
    pub vars: crate::template::Vars,
    /// Its machines keep network boot first on UEFI unless a deployment says otherwise.
    #[serde(default)]
    pub keep_network_first: bool,
    /// What its UEFI x64 machines start from the network: `shim` (the Secure Boot chain) or
    /// `ipxe`; None: the server's `uefi_loader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi_loader: Option<String>,
    /// How its machines' restores use disks larger than the image's, unless a deployment
    /// says; None: grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

impl Group {
    /// Its layout's name, empty when it has none (its machines grow).
    pub fn layout_name(&self) -> &'static str {
        self.layout.map_or("", Layout::as_str)
    }
}

/// One machine's part of a deployment, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    /// The task's id.
    pub id: String,
    /// Its deployment's id.
    pub deployment_id: String,
    /// The machine's MAC.
    pub mac: String,
    /// The machine's name (None: no longer in the inventory).
    pub name: Option<String>,
    /// Where it is.
    pub state: TaskState,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// What its agent reported: bytes written and verified, and how the chunks came.
    #[serde(flatten)]
    pub counters: WorkCounters,
    /// Bytes the task amounts to.
    pub bytes_total: u64,
    /// Bits per second, at the last report.
    pub rate_bps: u64,
    /// Share done, 0 to 100 (one decimal).
    pub percent: f64,
    /// Seconds left at the current rate, while it runs.
    pub eta_seconds: Option<f64>,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
    /// When its agent first reported.
    pub started_ms: Option<i64>,
    /// When its agent last reported.
    pub updated_ms: i64,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// What personalization changed on the machine, one line each.
    #[serde(default)]
    pub personalized: Vec<String>,
}

/// A deployment (one image to machines, or a capture) with its tasks and totals, as the API
/// returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// Its id.
    pub id: String,
    /// Restore or capture.
    pub kind: TaskKind,
    /// The image (a capture: empty until committed).
    pub image_id: String,
    /// `NAME@VERSION`.
    pub image_name: String,
    /// What it was given: machines and groups, comma-separated.
    pub targets: String,
    /// How the image moves.
    pub transport: Transport,
    /// Where a multicast deployment's stragglers finish.
    pub fallback: Fallback,
    /// Machines a multicast stream waits for.
    pub min_machines: Option<i64>,
    /// How long a multicast stream waits for them, milliseconds.
    pub max_wait_ms: Option<i64>,
    /// When its stream starts, Unix milliseconds.
    pub start_at_ms: Option<i64>,
    /// What the machines do afterwards.
    pub then_action: Then,
    /// How the machines are personalized.
    #[serde(default)]
    pub personalize: Personalize,
    /// How the image is laid out on disks larger than its own (None: each machine's group's
    /// choice, else grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Where it is.
    pub state: DeploymentState,
    /// The server that runs its multicast session.
    pub owner: String,
    /// Its live multicast session's id.
    pub session: Option<i64>,
    /// The session's group (`ADDR:PORT`).
    pub mcast_group: Option<String>,
    /// How agents join the session (`api`).
    pub mcast_http: Option<String>,
    /// Who made it.
    pub created_by: String,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
    /// When its stream (or first task) started.
    pub started_ms: Option<i64>,
    /// When its last task ended.
    pub finished_ms: Option<i64>,
    /// Its machines.
    pub machines: u64,
    /// How many tasks are in each state.
    pub task_states: std::collections::BTreeMap<String, u64>,
    /// The tasks' rates, summed (bits/s).
    pub rate_bps: u64,
    /// The tasks' bytes done, summed.
    pub bytes_done: u64,
    /// The tasks' bytes, summed.
    pub bytes_total: u64,
    /// Its tasks.
    pub tasks: Vec<Task>,
}

/// An image of the store, as the API returns it (`/api/v1/images`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    /// Its id (the manifest's hash).
    pub id: String,
    /// Its name and version (`NAME@VERSION`).
    pub name: String,
    /// Its version under the name.
    pub version: u32,
    /// When it was captured, Unix seconds.
    pub created: u64,
    /// The source disk's size, bytes.
    pub size: u64,
    /// Bytes of the disk it holds.
    pub used_bytes: u64,
    /// Bytes its chunks take in the store.
    pub stored_bytes: u64,
    /// Chunks it names.
    pub chunks: u64,
    /// Of them, those another image holds too (stored once).
    #[serde(default)]
    pub shared_chunks: u64,
    /// The filesystems drover read as used blocks.
    #[serde(default)]
    pub filesystems: Vec<String>,
    /// What it was captured from.
    #[serde(default)]
    pub source: String,
}

/// A chunk of an image that is missing or corrupt in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BadChunk {
    /// Its hash (BLAKE3, hex).
    pub hash: String,
    /// Where its region starts on the disk.
    pub disk_offset: u64,
    /// What is wrong.
    pub error: String,
}

/// `POST /api/v1/images/{reference}/verify`: what a re-read of every chunk found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageVerified {
    /// The image's id, name and version.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Chunk references checked.
    pub chunks: u64,
    /// The bad ones.
    pub bad: Vec<BadChunk>,
    /// No chunk is bad.
    pub ok: bool,
}

/// `GET /api/v1/servers`: one server sharing the database (several servers serve one lab
/// or several sites; a deployment is run by its machines' server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    /// Its id (a deployment's `owner`).
    pub id: String,
    /// Its public URL.
    pub url: String,
    /// When it last said it was alive, Unix milliseconds (0: it stopped).
    pub seen_ms: i64,
    /// Heard from within the last 30 seconds.
    pub alive: bool,
    /// The server answering this request.
    pub this: bool,
    /// Machines whose agents last talked to it.
    pub machines: u64,
}

/// `GET /api/v1/store`: where the server keeps its images and what it has read from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreInfo {
    /// The store: a directory, or a URL without credentials.
    pub location: String,
    /// Whether its objects are encrypted at rest.
    pub encrypted: bool,
    /// What the server read from an object store and from its local chunk cache (none for a
    /// directory; `cache_max_bytes` 0: the server keeps no cache).
    pub cache: Option<StoreCache>,
}

/// What a server read from its object store and from its local cache since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreCache {
    /// Chunk objects read from the store.
    pub store_reads: u64,
    /// Their bytes.
    pub store_bytes: u64,
    /// Chunk reads the cache answered.
    pub cache_hits: u64,
    /// Bytes the cache holds.
    pub cache_bytes: u64,
    /// The most it may hold.
    pub cache_max_bytes: u64,
    /// Chunks it holds.
    pub cache_files: u64,
    /// Cached chunks found damaged, dropped and read again from the store.
    pub damaged_in_cache: u64,
}

/// Every error answer of the API: `{"error": "..."}` with the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What is wrong, for a person.
    pub error: String,
}

/// `GET /api/v1/agent/manifest`: the task's image. `M` is the manifest (`imaging`'s type,
/// which this crate does not know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestReply<M> {
    /// The image's id.
    pub id: String,
    /// Its manifest.
    pub manifest: M,
    /// The manifest is a live stream's outline (its chunks' hashes pending): the source has
    /// not committed yet. Asked again once every chunk is written, it is the committed one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

/// `GET /api/v1/agent/seed`: whether a machine that finished should go on seeding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeedReply {
    /// Seed on (a machine of the deployment still lacks the image).
    pub seed: bool,
    /// The deployment's id.
    pub deployment: String,
    /// Its state.
    pub state: DeploymentState,
}

/// `POST /api/v1/agent/capture/have`: which of these chunks (BLAKE3, hex) the server lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HaveRequest {
    /// At most 1024.
    pub hashes: Vec<String>,
    /// A live capture's ([`AgentTask::live`]): where each of `hashes` goes in the stream
    /// (the n-th region the capture reads), one per hash. Those the server has are placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at: Vec<u64>,
}

/// The answer to [`HaveRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HaveReply {
    /// The asked hashes the server does not hold.
    pub missing: Vec<String>,
}

/// `PUT /api/v1/agent/capture/chunks/{hash}`: the chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkStored {
    /// Bytes it takes in the store.
    pub stored: u64,
    /// Whether it was new there (201), or held already (200).
    pub new: bool,
}

/// `POST /api/v1/agent/capture/commit`: the image a capture made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Committed {
    /// The image's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its version under that name.
    pub version: u32,
    /// Bytes of the disk it holds.
    pub used_bytes: u64,
    /// Chunks it names.
    pub chunks: u64,
    /// How many of them were uploaded (the others were on the server).
    pub uploaded: u64,
}

/// `POST /api/v1/deployments`: an image to machines and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    /// The image: its name (the newest version), `NAME@VERSION` or its id. Empty with
    /// `from`.
    #[serde(default)]
    pub image: String,
    /// Rather than an image, the disk of this machine (MAC), read by its agent and streamed
    /// to the targets as it is read (multicast, stragglers over unicast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// With `from`: also keep what was read as an image of this name (a new version if it
    /// exists). Without it nothing is kept once the deployment is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_as: Option<String>,
    /// Machines (MAC addresses) and groups.
    pub to: Vec<String>,
    /// How the image moves (multicast unless said).
    #[serde(default)]
    pub transport: Transport,
    /// Multicast: where stragglers and late joiners finish (unicast unless said).
    #[serde(default)]
    pub fallback: Fallback,
    /// Multicast: start once this many machines joined (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines: Option<i64>,
    /// Multicast: start after this long with whoever joined (`30s`, `5m`; default 10m unless
    /// `min_machines` or `start_at` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
    /// Multicast: start at this time (RFC 3339) with whoever joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// What the machines do afterwards (reboot unless said).
    #[serde(default)]
    pub then: Then,
    /// How the machines are personalized (each gets its hostname unless said).
    #[serde(default)]
    pub personalize: Personalize,
    /// How the image is laid out on disks larger than its own (unless said: each machine's
    /// group's choice, else grow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// `POST /api/v1/captures`: a machine's disk into a new image (version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewCapture {
    /// The machine whose disk is read.
    pub mac: String,
    /// The image's name (a new version if it exists).
    pub name: String,
    /// What the machine does afterwards (reboot unless said).
    #[serde(default)]
    pub then: Then,
    /// Passphrases for the disk's LUKS volumes: those they open are stored as the ciphertext
    /// of their used blocks. Held in the server's memory for the task's agent only, never
    /// stored or shown.
    #[serde(default, skip_serializing_if = "LuksKeys::is_empty")]
    pub luks_keys: LuksKeys,
}

/// LUKS passphrases, each the standard base64 of its bytes (a key file's whole contents).
/// Never printed: `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct LuksKeys(pub Vec<String>);

impl LuksKeys {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for LuksKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LuksKeys({} redacted)", self.0.len())
    }
}

/// `POST /api/v1/machines`: a machine for the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewMachine {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Its name (the MAC unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Full DHCP's fixed address for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The disk its agent writes when it has several: `serial:...` or `size:BYTES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// `PATCH /api/v1/machines/{mac}`: what changes. A field left out stays; `null` clears a
/// group, an address or a pinned disk (a name cannot be cleared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    /// A new name (not `null`).
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// A new group, or `null` for none.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub group: Option<Option<String>>,
    /// Full DHCP's fixed address, or `null` for none.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ip: Option<Option<String>>,
    /// The disk its agent writes (`serial:...`, `size:BYTES`), or `null` for the default.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub disk: Option<Option<String>>,
    /// Variables to set (a value) or remove (`null`); the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<VarsPatch>,
}

/// Variables to set (a value) or remove (`null`).
pub type VarsPatch = std::collections::BTreeMap<String, Option<String>>;

/// `PATCH /api/v1/groups/{name}`: what changes on a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    /// Variables to set (a value) or remove (`null`); the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<VarsPatch>,
    /// The group's default for keeping network boot first (see [`Personalize`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_network_first: Option<bool>,
    /// What its UEFI x64 machines start: `shim` or `ipxe`; `null`: the server's choice.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub uefi_loader: Option<Option<String>>,
    /// How its machines' restores use larger disks; `null`: grow.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub layout: Option<Option<Layout>>,
}

/// A field that, when present, holds a `T` (`None` when absent, through `default`). With
/// `T = Option<V>`, `null` is `Some(None)`: "clear it"; otherwise `null` is refused.
fn given<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// One entry of the audit log (`GET /api/v1/audit`): who did what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `token:NAME`, `user:NAME`, `agent:MAC`, `web:NAME` or `server`.
    pub actor: String,
    /// What was done (`machine.add`, `task.token`, ...).
    pub action: String,
    /// Its details.
    pub detail: String,
}

/// `POST /api/v1/groups`: a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// Its name.
    pub name: String,
}

/// `POST /api/v1/wake`: machines to wake, by MAC and by group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Wake {
    /// Machines by MAC.
    #[serde(default)]
    pub macs: Vec<String>,
    /// A group's machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The answer to [`Wake`]: the magic packets sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Woken {
    /// The MACs woken.
    pub woken: Vec<String>,
    /// Where the packets went (`ADDR:PORT`).
    pub to: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_their_wire_names_and_name_the_choices() {
        for t in Transport::ALL {
            assert_eq!(t.as_str().parse::<Transport>(), Ok(*t));
            let j = serde_json::to_string(t).unwrap();
            assert_eq!(j, format!("\"{t}\""));
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(*s));
        }
        let e = "carrier-pigeon".parse::<Transport>().unwrap_err();
        assert!(e.contains("multicast, bittorrent, unicast"), "{e}");
        assert!(TaskState::Receiving.active() && !TaskState::Done.active());
    }

    #[test]
    fn a_restore_plan_starts_with_the_transport_and_ends_with_unicast() {
        let task = |transport, fallback| AgentTask {
            id: "t".into(),
            deployment: "d".into(),
            kind: TaskKind::Restore,
            state: TaskState::Waiting,
            image: ImageRef {
                id: "i".into(),
                name: "lab@1".into(),
            },
            transport,
            deployment_state: DeploymentState::Running,
            multicast: None,
            fallback,
            bittorrent: None,
            then: Then::Reboot,
            bytes_total: 1,
            disk: None,
            personalize: None,
            luks_keys: LuksKeys::default(),
            layout: Layout::Grow,
            live: false,
        };
        use Transport::*;
        for (t, f, plan) in [
            (Multicast, Fallback::Unicast, vec![Multicast, Unicast]),
            (
                Multicast,
                Fallback::Bittorrent,
                vec![Multicast, Bittorrent, Unicast],
            ),
            (Bittorrent, Fallback::Unicast, vec![Bittorrent, Unicast]),
            (Bittorrent, Fallback::Bittorrent, vec![Bittorrent, Unicast]),
            (Unicast, Fallback::Bittorrent, vec![Unicast]),
        ] {
            assert_eq!(task(t, f).plan(), plan, "{t} with {f}");
        }
    }

    #[test]
    fn reports_keep_their_wire_shape() {
        let p: ProgressReport = serde_json::from_str(
            r#"{"state":"receiving","bytes_done":5,"bytes_total":9,"rate_bps":1,"multicast_chunks":2}"#,
        )
        .unwrap();
        assert_eq!(p.state, TaskState::Receiving);
        assert_eq!(p.counters().multicast_chunks, 2);
        assert_eq!(p.bytes_total, Some(9));
        assert!(serde_json::from_str::<ProgressReport>(
            r#"{"state":"receiving","bytes_done":1,"x":1}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<ProgressReport>(r#"{"state":"lost","bytes_done":1}"#).is_err()
        );
        let r: ResultReport = serde_json::from_str(r#"{"ok":false,"reason":"disk"}"#).unwrap();
        assert_eq!(r.reason.as_deref(), Some("disk"));
        let r: ResultReport =
            serde_json::from_str(r#"{"ok":true,"bytes_done":3,"kept_chunks":1}"#).unwrap();
        assert_eq!(r.counters.map(|c| c.kept_chunks), Some(1));
    }

    #[test]
    fn a_machine_patch_tells_null_from_absent() {
        let p: MachinePatch = serde_json::from_str(r#"{"group":null,"ip":"10.0.0.5"}"#).unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.group, Some(None));
        assert_eq!(p.ip, Some(Some("10.0.0.5".into())));
        assert_eq!(p.disk, None);
        let e = serde_json::from_str::<MachinePatch>(r#"{"owner":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("owner"), "{e}");
        assert!(serde_json::from_str::<MachinePatch>(r#"{"name":null}"#).is_err());
        let back: MachinePatch = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.ip, p.ip);
    }
}
