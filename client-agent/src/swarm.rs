//! A task over BitTorrent: the image's torrent from the server, librqbit writing pieces
//! straight to the target disk ([`transport::swarm::DiskStorage`]) from the server's seed and
//! the other machines, which it uploads to meanwhile; then every chunk checked (BLAKE3) on the
//! disk, anything wrong or missing fetched over unicast, and, once the result is reported,
//! seeding on until the deployment no longer needs it.
//!
//! A swarm that gives nothing for [`REJOIN`] is joined again (its peers tried afresh: the
//! server's seed turns away all but one machine, and librqbit waits minutes before it tries a
//! failed peer again); one that makes no progress for [`STALL`] (no seed reachable, only bad
//! peers) is left for unicast: a stuck peer never holds a machine up for long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use transport::swarm::librqbit::storage::StorageFactoryExt;
use transport::swarm::librqbit::{
    AddTorrent, AddTorrentOptions, ManagedTorrent, PeerConnectionOptions, Session,
    TorrentStatsState,
};
use transport::swarm::{DiskStorage, SwarmOptions};

use crate::api::{Api, CallError};
use crate::task::{Stop, SERVER_AWAY};

/// No progress for this long: the rest comes over unicast.
pub(crate) const STALL: Duration = Duration::from_secs(60);
/// A machine that finished seeds at most this long (its deployment should be over by then).
const MAX_SEED: Duration = Duration::from_secs(3600);
/// How often a seeding machine asks whether it is still needed.
const SEED_POLL: Duration = Duration::from_secs(3);

/// Peers on a lab network: a request window of 32 blocks (512 KiB) fills a gigabit link at
/// LAN round trips and keeps what queues at a rate-limited seed (the server's) short; a peer
/// silent for 30 s is dropped (librqbit's 10 s cut off a capped server's slow answers).
const PEER_OPTS: PeerConnectionOptions = PeerConnectionOptions {
    connect_timeout: Some(Duration::from_secs(10)),
    read_write_timeout: Some(Duration::from_secs(30)),
    keep_alive_interval: None,
    max_request_window: Some(32),
};

/// Resident memory above this (KiB) is logged once, with the swarm's state: the agent runs
/// from an initramfs on machines with little RAM, and its usual need is a fifth of it.
const MEMORY_WARN_KIB: u64 = 128 << 10;

/// No progress for this long: the machine joins the swarm again (at most this often).
const REJOIN: Duration = Duration::from_secs(15);

/// A finished machine's seed.
pub(crate) struct Seeding {
    session: Arc<Session>,
    handle: Arc<ManagedTorrent>,
}

/// What a machine that finished seeds: the swarm it downloaded in, or (written by multicast
/// in a deployment whose stragglers finish from the swarm) one it joins with its disk.
pub(crate) enum Seed {
    Live(Seeding),
    Later {
        disk: std::path::PathBuf,
        manifest: Box<imaging::manifest::Manifest>,
        limits: Option<proto::api::SwarmLimits>,
    },
}

impl Seed {
    /// Seeds until the deployment no longer needs it ([`Seeding::until_released`]).
    pub(crate) async fn until_released(self, api: &Api) {
        let s = match self {
            Self::Live(s) => s,
            Self::Later {
                disk,
                manifest,
                limits,
            } => match join(api, &disk, &manifest, limits, false).await {
                Ok((session, handle)) => {
                    // Its pieces are checked on the disk first: a seed only once they all are.
                    // (reading it at 100 MB/s at least).
                    let check = STALL + Duration::from_secs(manifest.used_bytes() / 100_000_000);
                    let ready = handle.wait_until_completed();
                    if tokio::time::timeout(check, ready).await.is_err() || !handle.stats().finished
                    {
                        warn!("the disk does not hold the whole torrent: not seeding");
                        return session.stop().await;
                    }
                    Seeding { session, handle }
                }
                Err(Stop::Failed(e) | Stop::Over(e)) => {
                    warn!("not seeding: {e}");
                    return;
                }
            },
        };
        s.until_released(api).await;
    }
}

/// What the swarm brought.
pub(crate) struct Swarmed {
    /// Payload bytes received from peers (the server's seed included).
    pub(crate) fetched: u64,
    /// The machine's seed, once the whole torrent was received (a machine that left a
    /// stalled swarm for unicast does not seed).
    pub(crate) seeding: Option<Seeding>,
}

/// Joins the image's swarm with the disk at `disk` as its storage.
async fn join(
    api: &Api,
    disk: &std::path::Path,
    manifest: &imaging::manifest::Manifest,
    limits: Option<proto::api::SwarmLimits>,
    paused: bool,
) -> Result<(Arc<Session>, Arc<ManagedTorrent>), Stop> {
    let torrent = api
        .retry("fetching the image's torrent", Some(SERVER_AWAY), || {
            api.bytes("/agent/torrent")
        })
        .await?;
    let storage = DiskStorage::open(disk, manifest).map_err(|e| Stop::Failed(format!("{e:#}")))?;
    let session = transport::swarm::session(SwarmOptions {
        role: transport::swarm::Role::Agent,
        listen: (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        upload_bytes_per_sec: limits.and_then(|l| l.upload_bps).map(|b| b / 8),
        peer_limit: limits.map(|l| l.peers),
        state_dir: None,
        default_storage: None,
        trackers: true,
    })
    .await
    .map_err(|e| Stop::Failed(format!("{e:#}")))?;
    let added = session
        .add_torrent(
            AddTorrent::TorrentFileBytes(torrent.into()),
            Some(AddTorrentOptions {
                overwrite: true,
                paused,
                storage_factory: Some(storage.boxed()),
                peer_opts: Some(PEER_OPTS),
                // Announce often (the tracker's interval is 30 s, its least 5 s): machines
                // that finish join as seeds, and a straggler should hear of them soon.
                force_tracker_interval: Some(Duration::from_secs(5)),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| Stop::Failed(format!("joining the swarm: {e:#}")))?;
    let handle = added
        .into_handle()
        .ok_or_else(|| Stop::Failed("joining the swarm: no torrent handle".into()))?;
    Ok((session, handle))
}

/// Downloads the task's torrent onto the disk, beside `target` (told how far it got: torrent
/// bytes scaled to the target's plaintext bytes; it checks the chunks afterwards).
pub(crate) async fn receive(
    api: &Api,
    args: &crate::Args,
    task: &proto::api::AgentTask,
    manifest: &imaging::manifest::Manifest,
    target: &transport::target::Target,
) -> Result<Swarmed, Stop> {
    let missing_total: u64 = target
        .missing()
        .iter()
        .map(|&i| target.sink().plain_len(i))
        .sum();
    let (session, handle) = join(api, &args.disk, manifest, task.bittorrent, true).await?;
    let failed = |e: anyhow::Error| Stop::Failed(format!("the swarm: {e:#}"));
    // Paused after its check of the disk: what the disk holds already.
    handle.wait_until_initialized().await.map_err(failed)?;
    let st = handle.stats();
    let (payload, had) = (st.total_bytes, st.progress_bytes);
    // All of it at once, in librqbit's order (file name = disk offset): with the server's
    // seed uploading to one machine at a time, each piece leaves the server about once and
    // runs down a pipeline of machines that pass it on as it arrives.
    session.unpause(&handle).await.map_err(failed)?;
    info!("joined the image's swarm: {had} of {payload} bytes on the disk already");
    let start = Instant::now();
    // Movement: bytes checked or bytes fetched changed since the last look.
    let (mut seen, mut moved, mut rejoined) = ((0u64, 0u64), Instant::now(), Instant::now());
    let mut last_log = Instant::now();
    let mut memory_warned = false;
    let complete = loop {
        let st = handle.stats();
        if let Some(kib) = crate::memory_kib("VmRSS:").filter(|k| *k > MEMORY_WARN_KIB) {
            if !std::mem::replace(&mut memory_warned, true) {
                warn!(
                    "{} MiB resident in the swarm ({} of {payload} bytes; peers {:?})",
                    kib >> 10,
                    st.progress_bytes,
                    st.live.as_ref().map(|l| &l.snapshot.peer_stats)
                );
            }
        }
        if let Some(e) = &st.error {
            warn!("the swarm failed: {e}; finishing over unicast");
            break false;
        }
        if st.finished {
            break true;
        }
        let live = matches!(st.state, TorrentStatsState::Live);
        let now = (
            st.progress_bytes,
            st.live.as_ref().map_or(0, |l| l.snapshot.fetched_bytes),
        );
        if now != seen {
            (seen, moved) = (now, Instant::now());
        } else if live && moved.elapsed() >= STALL {
            warn!(
                "the swarm gave nothing for {} s ({} of {payload} bytes; peers {:?}): finishing over unicast",
                STALL.as_secs(),
                st.progress_bytes,
                st.live.as_ref().map(|l| &l.snapshot.peer_stats)
            );
            break false;
        } else if live && moved.elapsed().min(rejoined.elapsed()) >= REJOIN {
            // Peers that failed are retried after 10 s, then a minute, then 6 minutes; the
            // server's seed turns away all but one machine. A fresh start of the torrent asks
            // the tracker again and tries every peer at once, the server's seed included.
            info!(
                "the swarm gave nothing for {} s (peers {:?}): joining it again",
                moved.elapsed().as_secs(),
                st.live.as_ref().map(|l| &l.snapshot.peer_stats)
            );
            session.pause(&handle).await.map_err(failed)?;
            session.unpause(&handle).await.map_err(failed)?;
            rejoined = Instant::now();
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            debug!(
                "swarm: {} of {payload} bytes, peers {:?}",
                st.progress_bytes,
                st.live.as_ref().map(|l| &l.snapshot.peer_stats)
            );
        }
        let got = st.progress_bytes.min(payload).saturating_sub(had);
        let left = payload.saturating_sub(had).max(1);
        target.set_beside((got as u128 * missing_total as u128 / left as u128) as u64);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let st = handle.stats();
    // Payload bytes received and checked (pieces the disk held already are not counted).
    let fetched = st.progress_bytes.min(payload).saturating_sub(had);
    info!(
        "swarm: {} of {payload} bytes in {:.1} s ({fetched} received, {} uploaded)",
        st.progress_bytes.min(payload),
        start.elapsed().as_secs_f64(),
        st.uploaded_bytes
    );
    if !complete {
        // Nothing more is written by the swarm while unicast fills the gaps.
        session.stop().await;
    }
    Ok(Swarmed {
        fetched,
        seeding: complete.then_some(Seeding { session, handle }),
    })
}

impl Seeding {
    /// Uploads to the other machines until the deployment no longer needs it (asked every
    /// few seconds), the server stays away too long, or [`MAX_SEED`] passed.
    pub(crate) async fn until_released(self, api: &Api) {
        eprintln!("seeding for the other machines of the deployment");
        let start = Instant::now();
        let mut away_since: Option<Instant> = None;
        loop {
            match api.get::<proto::api::SeedReply>("/agent/seed").await {
                Ok(v) if !v.seed => {
                    info!("the deployment is {}: no more seeding", v.state);
                    break;
                }
                Ok(_) => away_since = None,
                Err(CallError::Away(e)) => {
                    let since = *away_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SERVER_AWAY {
                        warn!("the server is away ({e}): no more seeding");
                        break;
                    }
                }
                Err(e) => {
                    warn!("the server refused the seeding check ({e}): no more seeding");
                    break;
                }
            }
            if start.elapsed() >= MAX_SEED {
                warn!("seeded for {} s: no more", MAX_SEED.as_secs());
                break;
            }
            tokio::time::sleep(SEED_POLL).await;
        }
        let up = self.handle.stats().uploaded_bytes;
        eprintln!("seeded {} to other machines", transport::fmt::bytes(up));
        self.session.stop().await;
    }
}
