//! Deployments: one image to machines and groups, over multicast (a sender session of the
//! `transport` crate, run in the daemon on a thread of its own) or unicast (agents fetch
//! every chunk from `GET /api/v1/chunks/{hash}`). Machines that lag, join late or outlive a
//! server restart finish over unicast from the same endpoint, so a deployment never waits
//! for its slowest machine and never depends on one process staying up.
//!
//! After a restart, the server resumes the deployments it owns: one whose stream had not
//! started yet gets a fresh multicast session; in one that had, agents that were mid-way go
//! on over unicast, as do machines that come later.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use imaging::manifest::{Hash, Manifest};
use imaging::store::{Store, StoredImage};
use proto::api::{DeploymentState, Fallback, TaskState, Then, Transport};
use proto::{Fec, SenderConfig, SessionKey, StartPolicy};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};
use transport::net::Iface;
use transport::send::{self, Control, Hooks};
use transport::session::Source;

use crate::serve::db::{now_ms, Db, DbError};
use crate::serve::deployments::repo::{Deployment, NewDeployment};
use crate::serve::inventory::mac::Mac;

/// A multicast deployment with neither a machine count nor a wait starts after this long
/// with whoever joined; the others finish over unicast.
pub(crate) const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(600);

/// The UDP port of deployment sessions; each deployment gets a group of its own.
const SESSION_PORT: u16 = 9077;

/// An image's chunks, for the chunk endpoint: hash → plaintext length.
pub(crate) struct ImageIndex {
    pub(crate) manifest: Manifest,
    pub(crate) lens: HashMap<Hash, usize>,
}

/// What a deployment request asks for (already parsed).
pub(crate) struct DeployRequest {
    pub(crate) image: String,
    pub(crate) targets: Vec<String>,
    pub(crate) transport: Transport,
    /// Where a multicast deployment's stragglers finish.
    pub(crate) fallback: Fallback,
    pub(crate) min_machines: Option<i64>,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) start_at_ms: Option<i64>,
    pub(crate) then_action: Then,
    /// How the machines are personalized.
    pub(crate) personalize: proto::api::Personalize,
    /// How the image is laid out on disks larger than its own (None: each machine's
    /// group's choice, else grow).
    pub(crate) layout: Option<proto::api::Layout>,
}

/// Whether `n` may name an image: 1 to 64 characters, without '/', '@' or control
/// characters (a capture's name, a stream's `--keep-as`). The error says what is allowed.
pub(crate) fn check_image_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 64 || n.contains(['/', '@']) || n.chars().any(char::is_control) {
        return Err(format!(
            "{n:?}: 1 to 64 characters, without '/', '@' or control characters"
        ));
    }
    Ok(())
}

impl DeployRequest {
    /// The restore deployment's row for this request: image `image_id` named `image_name`,
    /// `bytes_total` bytes for each machine.
    pub(crate) fn restore_row<'a>(
        &'a self,
        image_id: &'a str,
        image_name: &'a str,
        targets: &'a str,
        owner: &'a str,
        actor: &'a str,
        bytes_total: i64,
    ) -> NewDeployment<'a> {
        NewDeployment {
            kind: "restore",
            image_id,
            image_name,
            targets,
            transport: self.transport.as_str(),
            fallback: self.fallback.as_str(),
            min_machines: self.min_machines,
            max_wait_ms: self.max_wait.map(|d| d.as_millis() as i64),
            start_at_ms: self.start_at_ms,
            then_action: self.then_action.as_str(),
            layout: self.layout.map(|l| l.as_str()),
            owner,
            created_by: actor,
            bytes_total,
            personalize: &self.personalize,
        }
    }
}

/// Why a deployment request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeployError {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<DbError> for DeployError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(w) => Self::NotFound(format!("{w} not found")),
            DbError::Exists(w) => Self::Conflict(format!("{w} already exists")),
            DbError::Invalid(w) => Self::Bad(w),
            DbError::Unavailable(w) => Self::Conflict(w),
            DbError::Other(e) => Self::Other(e),
        }
    }
}

/// The deployment service.
pub(crate) struct Deployer {
    /// Where its background work runs (watchers of sessions, torrent builds).
    pub(super) tasks: crate::serve::tasks::Tasks,
    pub(super) db: Db,
    pub(super) store: Store,
    /// The data directory (fitted disks are staged in its `scratch/`).
    data_dir: PathBuf,
    pub(super) iface: Option<Iface>,
    rate_bps: u64,
    window_bytes: u64,
    /// This server's id (multicast sessions are run by the server that owns them).
    pub(crate) owner: String,
    sessions: Mutex<HashMap<String, mpsc::Sender<Control>>>,
    /// The HTTP routes (description, registration) of each live session, served by
    /// `/api/v1/agent/session` to the deployment's agents only.
    session_routes: Mutex<HashMap<String, axum::Router>>,
    images: Mutex<HashMap<String, Arc<ImageIndex>>>,
    /// The id of every deployment that changed (for server-sent events).
    changes: broadcast::Sender<String>,
    /// The machines of every batch of new tasks (for agents waiting in hello).
    new_tasks: broadcast::Sender<Arc<Vec<Mac>>>,
    /// Chunks being sent over unicast at once, at most (each holds its frame in memory).
    pub(crate) chunk_slots: Arc<tokio::sync::Semaphore>,
    /// The server's BitTorrent seed, and what agents in a swarm may do.
    pub(crate) seeder: Arc<crate::serve::swarm::seeder::Seeder>,
    pub(crate) agent_swarm: AgentSwarm,
    /// Each capture deployment's LUKS passphrases, for its agent: in memory only (a restart
    /// forgets them, and the capture stores its encrypted volumes as raw copies, saying so).
    capture_keys: Mutex<HashMap<String, proto::api::LuksKeys>>,
    /// Deployments straight from a machine's disk, while they run.
    pub(super) streams: Mutex<Vec<Arc<super::stream::Stream>>>,
    /// Images fitted to smaller disks: (image id, disk bytes) → where that stands.
    pub(super) fits: Mutex<HashMap<(String, u64), super::fit::Fit>>,
    /// Tasks already given a fitted image (their session was told they will not join).
    fitted_tasks: Mutex<std::collections::HashSet<String>>,
    /// Capture deployments holding the store (shared) from their first upload until they are
    /// over, so `drover image gc` (here or on another server) never frees what they uploaded.
    pub(super) capture_holds: Mutex<std::collections::HashSet<String>>,
    /// The deployments this server has taken up (created here, resumed, or created for it by
    /// another server on the same database).
    taken: Mutex<std::collections::HashSet<String>>,
    /// Held while a deployment is created here and while the server looks for deployments to
    /// take up, so that one created here is never taken up a second time.
    creating: tokio::sync::Mutex<()>,
}

/// Swarm limits of every agent: upload rate (bits/s) and peers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AgentSwarm {
    pub(crate) upload_bps: Option<u64>,
    pub(crate) peers: usize,
}

/// Unicast chunk responses in flight at once: 16 × 4 MiB frames bound the server's memory,
/// and keep a shared link full.
const CHUNK_SLOTS: usize = 16;

impl Deployer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tasks: crate::serve::tasks::Tasks,
        db: Db,
        store: Store,
        data_dir: PathBuf,
        iface: Option<Iface>,
        rate_bps: u64,
        window_bytes: u64,
        owner: String,
        seeder: Arc<crate::serve::swarm::seeder::Seeder>,
        agent_swarm: AgentSwarm,
    ) -> Arc<Self> {
        Arc::new(Self {
            tasks,
            db,
            store,
            data_dir,
            iface,
            rate_bps,
            window_bytes,
            owner,
            sessions: Mutex::new(HashMap::new()),
            session_routes: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            changes: broadcast::channel(1024).0,
            new_tasks: broadcast::channel(64).0,
            chunk_slots: Arc::new(tokio::sync::Semaphore::new(CHUNK_SLOTS)),
            seeder,
            agent_swarm,
            capture_keys: Mutex::new(HashMap::new()),
            streams: Mutex::new(Vec::new()),
            fits: Mutex::new(HashMap::new()),
            fitted_tasks: Mutex::new(std::collections::HashSet::new()),
            capture_holds: Mutex::new(std::collections::HashSet::new()),
            taken: Mutex::new(std::collections::HashSet::new()),
            creating: tokio::sync::Mutex::new(()),
        })
    }

    /// Keeps a capture deployment's LUKS passphrases for its agent.
    pub(crate) fn set_capture_keys(&self, id: &str, keys: proto::api::LuksKeys) {
        if !keys.is_empty() {
            self.capture_keys
                .lock()
                .expect("lock")
                .insert(id.to_string(), keys);
        }
    }

    /// A capture deployment's LUKS passphrases (none when it has none, or they are gone).
    pub(crate) fn capture_keys(&self, id: &str) -> proto::api::LuksKeys {
        self.capture_keys
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets a capture deployment's passphrases once its task no longer needs them.
    pub(crate) fn forget_capture_keys(&self, id: &str) {
        self.capture_keys.lock().expect("lock").remove(id);
    }

    /// Tells listeners that a deployment changed.
    /// The HTTP routes of deployment `id`'s live multicast session, if it has one here.
    pub(crate) fn session_routes(&self, id: &str) -> Option<axum::Router> {
        self.session_routes.lock().expect("lock").get(id).cloned()
    }

    pub(crate) fn changed(&self, id: &str) {
        let _ = self.changes.send(id.to_string());
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Tells agents waiting in hello that these machines have a task now.
    pub(crate) fn tasks_created(&self, macs: Vec<Mac>) {
        let _ = self.new_tasks.send(Arc::new(macs));
    }

    /// New tasks' machines from now on. A waiting hello subscribes before it looks in the
    /// database, so a task created in between is not missed.
    pub(crate) fn watch_tasks(&self) -> broadcast::Receiver<Arc<Vec<Mac>>> {
        self.new_tasks.subscribe()
    }

    pub(super) fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Task `task` of deployment `id` gets a fitted image over unicast: its multicast
    /// session (if one waits) starts without it.
    pub(crate) async fn task_fitted(&self, id: &str, task: &str) {
        if !self
            .fitted_tasks
            .lock()
            .expect("lock")
            .insert(task.to_string())
        {
            return;
        }
        let ctl = self.sessions.lock().expect("lock").get(id).cloned();
        if let Some(c) = ctl {
            let _ = c.send(Control::OneFewer).await;
        }
    }

    pub(super) fn store(&self) -> anyhow::Result<Store> {
        Ok(self.store.clone())
    }

    /// The image's chunk index (cached).
    pub(crate) async fn image(&self, id: &str) -> anyhow::Result<Arc<ImageIndex>> {
        if let Some(i) = self.images.lock().expect("lock").get(id) {
            return Ok(i.clone());
        }
        let store = self.store()?;
        let key = id.to_string();
        let img = tokio::task::spawn_blocking(move || store.resolve(&key)).await??;
        let cs = img.manifest.chunk_size;
        let lens = img
            .manifest
            .chunks()
            .map(|(a, c)| (c.hash, a.region_len(c.index, cs) as usize))
            .collect();
        let index = Arc::new(ImageIndex {
            manifest: img.manifest,
            lens,
        });
        self.images
            .lock()
            .expect("lock")
            .insert(id.to_string(), index.clone());
        Ok(index)
    }

    /// Reads one chunk's stored frame (zstd, as multicast sends it).
    pub(crate) async fn chunk_frame(&self, hash: Hash, len: usize) -> anyhow::Result<Vec<u8>> {
        let store = self.store()?;
        Ok(tokio::task::spawn_blocking(move || store.read_frame(&hash, len)).await??)
    }

    /// Checks a deployment request without creating anything: the transport and the action
    /// after, the image, the targets and the machine count. Returns the image and the
    /// machines.
    pub(crate) async fn check(
        &self,
        r: &DeployRequest,
    ) -> Result<(StoredImage, Vec<Mac>), DeployError> {
        if r.fallback == Fallback::Bittorrent && r.transport != Transport::Multicast {
            return Err(DeployError::Bad(format!(
                "fallback bittorrent is for multicast deployments ({} ones finish over unicast)",
                r.transport
            )));
        }
        if r.transport == Transport::Multicast && self.iface.is_none() {
            return Err(DeployError::Conflict(
                "multicast is off: the server has no lab interface (start it with --iface), \
                 or deploy with --transport unicast"
                    .into(),
            ));
        }
        let store = self.store()?;
        let reference = r.image.clone();
        let img = tokio::task::spawn_blocking(move || store.resolve(&reference))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(|e| DeployError::NotFound(format!("image {:?}: {e}", r.image)))?;
        let macs = self.resolve_targets(&r.targets).await?;
        super::personalize::check(&self.db, &r.personalize, &macs).await?;
        if let Some(n) = r.min_machines {
            if n < 1 || n as usize > macs.len() {
                return Err(DeployError::Bad(format!(
                    "min machines {n}: between 1 and the {} machine(s) targeted",
                    macs.len()
                )));
            }
        }
        Ok((img, macs))
    }

    /// Creates a deployment: resolves the image and the targets, creates the tasks, and for
    /// multicast starts the session.
    pub(crate) async fn create(
        self: &Arc<Self>,
        r: DeployRequest,
        actor: &str,
    ) -> Result<Deployment, DeployError> {
        let (img, macs) = self.check(&r).await?;
        self.create_for(r, img, macs, actor).await
    }

    /// As [`create`](Self::create), but machines that have a task already are left out
    /// (a scheduled redeploy goes on without the one machine stuck in an earlier task) and
    /// named in the answer. Only when every machine is busy is nothing created.
    pub(crate) async fn create_skipping_busy(
        self: &Arc<Self>,
        mut r: DeployRequest,
        actor: &str,
    ) -> Result<(Deployment, Vec<String>), DeployError> {
        let (img, macs) = self.check(&r).await?;
        let (mut free, mut busy) = (Vec::new(), Vec::new());
        for m in macs {
            match self.db.deployments().active_task(m).await? {
                Some(t) => busy.push(format!("{m} (in deployment {})", t.deployment_id)),
                None => free.push(m),
            }
        }
        if free.is_empty() {
            return Err(DeployError::Conflict(format!(
                "every machine has a task already: {}",
                busy.join(", ")
            )));
        }
        r.min_machines = r.min_machines.map(|n| n.min(free.len() as i64));
        Ok((self.create_for(r, img, free, actor).await?, busy))
    }

    async fn create_for(
        self: &Arc<Self>,
        r: DeployRequest,
        img: StoredImage,
        macs: Vec<Mac>,
        actor: &str,
    ) -> Result<Deployment, DeployError> {
        let name = format!("{}@{}", img.manifest.name, img.manifest.name_version);
        // What agents count: the plaintext of every chunk.
        let total = img
            .manifest
            .chunks()
            .map(|(a, c)| a.region_len(c.index, img.manifest.chunk_size))
            .sum::<u64>() as i64;
        let targets = r.targets.join(",");
        // Run by the server its machines talk to (several servers on one database): its
        // stream and seed come from their network.
        let listed: Vec<String> = macs.iter().map(Mac::to_string).collect();
        let owner = match self.db.servers().site_of(&listed).await? {
            Some(site) => site,
            None => self.owner.clone(),
        };
        let creating = self.creating.lock().await;
        let d = self
            .db
            .deployments()
            .create_deployment(
                &r.restore_row(&img.id, &name, &targets, &owner, actor, total),
                &macs,
            )
            .await
            .map_err(|e| match e {
                DbError::Exists(w) => DeployError::Conflict(w),
                e => e.into(),
            })?;
        self.db
            .audit(
                actor,
                "deployment.create",
                &format!(
                    "{} {name} to {} via {} ({} machine(s))",
                    d.id,
                    d.targets,
                    d.transport,
                    macs.len()
                ),
            )
            .await?;
        if d.owner == self.owner {
            self.taken.lock().expect("lock").insert(d.id.clone());
        }
        drop(creating);
        if d.owner != self.owner {
            // Its owner takes it up within a few seconds (`follow`).
            info!(deployment = %d.id, server = %d.owner, "run by its machines' server");
        } else {
            if d.transport == Transport::Multicast {
                self.start_session(&d, macs.len()).await?;
            }
            if d.transport == Transport::Bittorrent || d.fallback == Fallback::Bittorrent {
                self.prepare_swarm(&d.image_id);
            }
        }
        self.tasks_created(macs);
        self.changed(&d.id);
        Ok(self.db.deployments().deployment(&d.id).await?)
    }

    /// MACs and group names → the machines, each once. Unknown names are errors.
    pub(crate) async fn resolve_targets(
        &self,
        targets: &[String],
    ) -> Result<Vec<Mac>, DeployError> {
        if targets.is_empty() {
            return Err(DeployError::Bad(
                "no targets: name machines (MAC) or groups".into(),
            ));
        }
        let groups = self.db.inventory().groups().await?;
        let mut macs = Vec::new();
        for t in targets {
            if let Ok(mac) = t.parse::<Mac>() {
                self.db.inventory().machine(mac).await.map_err(|_| {
                    DeployError::NotFound(format!(
                        "machine {mac} is not in the inventory (drover machine add {mac})"
                    ))
                })?;
                macs.push(mac);
            } else if groups.iter().any(|g| &g.name == t) {
                let members = self.db.inventory().machines(Some(t)).await?;
                if members.is_empty() {
                    return Err(DeployError::Bad(format!("group {t:?} has no machines")));
                }
                for m in members {
                    macs.push(m.mac.parse().map_err(anyhow::Error::msg)?);
                }
            } else {
                return Err(DeployError::NotFound(format!(
                    "{t:?} is neither a MAC address nor a group"
                )));
            }
        }
        macs.sort();
        macs.dedup();
        Ok(macs)
    }

    /// Starts the multicast session of a deployment for `machines` machines, and records
    /// its address once it announces.
    async fn start_session(
        self: &Arc<Self>,
        d: &Deployment,
        machines: usize,
    ) -> anyhow::Result<()> {
        let store = self.store()?;
        let index = self.image(&d.image_id).await?;
        let (id, manifest) = (d.image_id.clone(), index.manifest.clone());
        let source =
            tokio::task::spawn_blocking(move || Source::image(store, id, manifest)).await??;
        self.start_session_with(d, machines, source).await
    }

    /// [`start_session`](Self::start_session) with its chunks from `source`.
    pub(super) async fn start_session_with(
        self: &Arc<Self>,
        d: &Deployment,
        machines: usize,
        source: Source,
    ) -> anyhow::Result<()> {
        let iface = self.iface.clone().context("no lab interface")?;
        let mut config = SenderConfig::new(0, SessionKey::new([0; 32]));
        config.rate_bps = self.rate_bps;
        config.min_rate_bps = (self.rate_bps / 10).max(1_000_000).min(self.rate_bps);
        config.window_bytes = self.window_bytes;
        config.fec = Fec::Auto {
            floor: proto::sender::DEFAULT_FEC_OVERHEAD,
        };
        let min = d
            .min_machines
            .map_or(machines, |n| (n as usize).min(machines));
        let max_wait = match (d.max_wait_ms, d.min_machines, d.start_at_ms) {
            (Some(ms), _, _) => Some(Duration::from_millis(ms as u64)),
            (None, None, None) => Some(DEFAULT_MAX_WAIT),
            _ => None,
        };
        config.start = StartPolicy {
            min_receivers: match (d.min_machines, d.start_at_ms) {
                (None, Some(_)) => usize::MAX,
                _ => min.max(1),
            },
            max_wait,
            start_at: d.start_at_ms.map(|at| {
                std::time::Instant::now()
                    + Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64)
            }),
        };
        let group = group_for(&d.id);
        let (ctl_tx, ctl_rx) = mpsc::channel(4);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (end_tx, end_rx) = oneshot::channel();
        let (started_tx, started_rx) = oneshot::channel();
        let opts = send::SendOptions {
            source,
            name: d.image_name.clone(),
            iface,
            group,
            broadcast: false,
            ttl: 1,
            http_port: 0,
            unicast_rate: (self.rate_bps / 4).max(1_000_000),
            config,
            events: None,
            hooks: Some(Hooks {
                control: ctl_rx,
                ready: ready_tx,
                started: started_tx,
            }),
        };
        let deployment = d.id.clone();
        std::thread::Builder::new()
            .name(format!("session-{deployment}"))
            .spawn(move || {
                let r = transport::session_runtime().and_then(|rt| rt.block_on(send::run(opts)));
                let _ = end_tx.send(r);
            })
            .context("starting the session thread")?;
        self.sessions
            .lock()
            .expect("lock")
            .insert(d.id.clone(), ctl_tx);
        let ready = tokio::time::timeout(Duration::from_secs(120), ready_rx)
            .await
            .context("the session did not start within 2 minutes")?
            .context("the session failed to start")?;
        self.session_routes
            .lock()
            .expect("lock")
            .insert(d.id.clone(), ready.routes);
        // Agents join through the API ("api"): the session opens no port of its own.
        self.db
            .deployments()
            .set_session(
                &d.id,
                Some((ready.session, group.to_string(), "api".to_string())),
            )
            .await?;
        info!(deployment = %d.id, session = format!("{:08x}", ready.session), %group, "multicast session announced");
        let this = self.clone();
        let id = d.id.clone();
        let span = tracing::info_span!("deployment", id = %d.id);
        self.tasks.spawn(span.clone(), async move {
            if started_rx.await.is_ok() {
                info!(deployment = %id, "multicast stream started");
                if let Err(e) = this.db.deployments().deployment_started(&id).await {
                    warn!(deployment = %id, error = %format!("{e:#}"), "recording the start");
                }
                this.changed(&id);
            }
            Ok(())
        });
        // When the session ends, later machines use unicast.
        let this = self.clone();
        let id = d.id.clone();
        self.tasks.spawn(span, async move {
            match end_rx.await {
                Ok(Ok(sent)) if sent.joined => {
                    info!(deployment = %id, "multicast session over")
                }
                Ok(Ok(_)) => warn!(deployment = %id, "multicast session ended: no agent joined it"),
                Ok(Err(e)) => {
                    warn!(deployment = %id, error = %format!("{e:#}"), "multicast session ended")
                }
                Err(_) => warn!(deployment = %id, "multicast session thread panicked"),
            }
            this.sessions.lock().expect("lock").remove(&id);
            this.session_routes.lock().expect("lock").remove(&id);
            if let Err(e) = this.db.deployments().set_session(&id, None).await {
                warn!(deployment = %id, error = %format!("{e:#}"), "recording the session's end");
            }
            this.changed(&id);
            Ok(())
        });
        Ok(())
    }

    /// Builds and seeds the image's torrent in the background (hashing a large image takes a
    /// while; agents that ask for the torrent meanwhile are told to come back).
    fn prepare_swarm(&self, image_id: &str) {
        let (seeder, id) = (self.seeder.clone(), image_id.to_string());
        self.tasks
            .spawn(tracing::info_span!("torrent", image = %id), async move {
                if let Err(e) = seeder.prepare(&id).await {
                    warn!(error = %e.message(), "the image's torrent is not seeded");
                }
                Ok(())
            });
    }

    /// Starts a waiting multicast deployment's stream now.
    pub(crate) async fn start_now(&self, id: &str, actor: &str) -> Result<(), DeployError> {
        let d = self.db.deployments().deployment(id).await?;
        let ctl = self.sessions.lock().expect("lock").get(id).cloned();
        match ctl {
            Some(c) if d.state == DeploymentState::Waiting => {
                let _ = c.send(Control::StartNow).await;
                self.db
                    .audit(actor, "deployment.start", id)
                    .await
                    .map_err(DeployError::Other)?;
                Ok(())
            }
            // Another server runs it: it starts the stream when it sees the request.
            None if d.owner != self.owner
                && d.state == DeploymentState::Waiting
                && self.db.deployments().request_start(id).await? =>
            {
                self.db
                    .audit(
                        actor,
                        "deployment.start",
                        &format!("{id} (on server {})", d.owner),
                    )
                    .await
                    .map_err(DeployError::Other)?;
                Ok(())
            }
            _ => Err(DeployError::Conflict(format!(
                "deployment {id} is not waiting for machines (it is {})",
                d.state
            ))),
        }
    }

    /// Cancels a deployment: its tasks end, its session stops.
    pub(crate) async fn cancel(&self, id: &str, actor: &str) -> Result<(), DeployError> {
        if !self
            .db
            .deployments()
            .cancel_deployment(id, &format!("cancelled by {actor}"))
            .await?
        {
            let d = self.db.deployments().deployment(id).await?;
            return Err(DeployError::Conflict(format!(
                "deployment {id} is already over ({})",
                d.state
            )));
        }
        self.stop_session(id).await;
        self.db
            .audit(actor, "deployment.cancel", id)
            .await
            .map_err(DeployError::Other)?;
        self.changed(id);
        if let Some(s) = self.stream_of(id) {
            self.stream_failed(&s, &format!("deployment {id} was cancelled by {actor}"))
                .await;
            self.prune_streams().await;
        }
        Ok(())
    }

    /// Stops deployment `id`'s multicast session, if it has one here.
    pub(super) async fn stop_session(&self, id: &str) {
        let ctl = self.sessions.lock().expect("lock").remove(id);
        self.session_routes.lock().expect("lock").remove(id);
        if let Some(c) = ctl {
            let _ = c.send(Control::Cancel).await;
        }
    }

    /// After a restart: the deployments this server owns that are not over get a new
    /// session for their machines that have not started; the others finish over unicast.
    pub(crate) async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        for d in self.fresh_deployments().await? {
            if d.session.is_some() {
                self.db.deployments().set_session(&d.id, None).await?;
            }
            if let Some(capture) = d.image_id.strip_prefix(super::stream::IMAGE_PREFIX) {
                // A stream lives in the memory of the server that ran it.
                let why = "the server restarted while streaming the source machine's disk:                            deploy again";
                for id in [d.id.as_str(), capture] {
                    if self.db.deployments().cancel_deployment(id, why).await? {
                        warn!(deployment = %id, "{why}");
                    }
                }
                continue;
            }
            let waiting = self
                .db
                .deployments()
                .tasks_of(&d.id)
                .await?
                .iter()
                .filter(|t| t.state == TaskState::Waiting)
                .count();
            info!(deployment = %d.id, transport = %d.transport, waiting, "resuming deployment");
            self.take_up(d, waiting).await;
        }
        Ok(())
    }

    /// Starts what deployment `d` (run by this server, `waiting` of its machines not started)
    /// needs here: its seed, and its multicast session while it waits for its stream.
    async fn take_up(self: &Arc<Self>, d: Deployment, waiting: usize) {
        if d.transport == Transport::Bittorrent || d.fallback == Fallback::Bittorrent {
            self.prepare_swarm(&d.image_id);
        }
        // A stream that had started is not started again: its machines that had not
        // joined are late joiners, who finish over unicast as they would have anyway.
        if d.transport == Transport::Multicast
            && d.state == DeploymentState::Waiting
            && waiting > 0
            && self.iface.is_some()
        {
            let mut d = d;
            d.min_machines = d.min_machines.map(|n| n.min(waiting as i64));
            if let Err(e) = self.start_session(&d, waiting).await {
                warn!(deployment = %d.id, error = %format!("{e:#}"), "no new session: its machines use unicast");
            }
        }
    }

    /// Follows, for as long as the server runs, what other servers on the same database ask
    /// of this one: deployments created for its machines are taken up, a "start now" asked
    /// elsewhere starts the stream, a deployment cancelled elsewhere stops its session.
    pub(crate) async fn follow(self: &Arc<Self>) -> anyhow::Result<()> {
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            if let Err(e) = self.follow_once().await {
                warn!(error = %format!("{e:#}"), "could not read what other servers asked");
            }
        }
    }

    /// The deployments not over, run by this server, that it has not taken up yet (now it
    /// has).
    async fn fresh_deployments(&self) -> anyhow::Result<Vec<Deployment>> {
        let _creating = self.creating.lock().await;
        let live = self.db.deployments().live_deployments(&self.owner).await?;
        let mut taken = self.taken.lock().expect("lock");
        Ok(live
            .into_iter()
            .filter(|d| taken.insert(d.id.clone()))
            .collect())
    }

    async fn follow_once(self: &Arc<Self>) -> anyhow::Result<()> {
        for d in &self.fresh_deployments().await? {
            let waiting = self
                .db
                .deployments()
                .tasks_of(&d.id)
                .await?
                .iter()
                .filter(|t| t.state == TaskState::Waiting)
                .count();
            info!(deployment = %d.id, transport = %d.transport, waiting, created_by = %d.created_by, "taking up a deployment created on another server");
            self.take_up(d.clone(), waiting).await;
            self.changed(&d.id);
        }
        for id in self
            .db
            .deployments()
            .take_start_requests(&self.owner)
            .await?
        {
            let ctl = self.sessions.lock().expect("lock").get(&id).cloned();
            if let Some(c) = ctl {
                info!(deployment = %id, "starting the stream, as asked on another server");
                let _ = c.send(Control::StartNow).await;
            }
        }
        let running: Vec<String> = self
            .sessions
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        for id in running {
            if !self.db.deployments().deployment(&id).await?.state.active() {
                info!(deployment = %id, "stopping its session: the deployment is over");
                self.stop_session(&id).await;
                self.changed(&id);
            }
        }
        Ok(())
    }
}

/// How often a server looks at what other servers on its database asked of it.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// The deployment's multicast group: 239.255.78.x, from its id (distinct groups keep one
/// deployment's traffic off another's machines; a collision costs bandwidth, not data:
/// the session id and key tell sessions apart).
fn group_for(id: &str) -> SocketAddrV4 {
    let h = blake3::hash(id.as_bytes());
    let b = h.as_bytes();
    SocketAddrV4::new(
        std::net::Ipv4Addr::new(239, 255, 78, 1 + b[0] % 254),
        SESSION_PORT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_organisation_local_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            let g = group_for(&format!("{i:08x}"));
            assert!(g.ip().is_multicast());
            assert_eq!(&g.ip().octets()[..3], &[239, 255, 78]);
            assert_ne!(g.ip().octets()[3], 0);
            assert_ne!(g.ip().octets()[3], 255);
            seen.insert(*g.ip());
        }
        assert!(seen.len() > 40, "{}", seen.len());
    }
}
