//! The server's BitTorrent seed: a librqbit session ([`transport::swarm`]) that uploads image
//! torrents from the chunk store. It starts on first use (a `.torrent` fetched, a BitTorrent
//! deployment) or at server start when it seeded before; its torrents and their piece state
//! are kept in `DATA/bt` (fastresume), so a restart neither forgets nor re-hashes them.
//!
//! Peers find the server through its own tracker, which lists it for every torrent it seeds.
//! The seed announces to that tracker too, over the server's own address (never the public
//! URL: it stays on this host), and hears only of stock clients (drover's agents reach it
//! themselves): it connects to them with a plain handshake, which is how clients that open
//! with an encrypted handshake or over uTP (transmission) get pieces from it, as librqbit
//! speaks neither. `bittorrent_upload_rate = "0"` turns the seed off (the tracker and
//! the agents' own swarm go on).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::http::StatusCode;
use tracing::{info, warn};
use transport::swarm::librqbit::{AddTorrent, AddTorrentOptions, Session};

use crate::serve::web::api::{ApiError, ApiResult};

/// The default port peers reach the server's seed at.
pub(crate) const DEFAULT_PORT: u16 = 6881;

pub(crate) struct Seeder {
    tracker: Arc<crate::serve::swarm::tracker::Tracker>,
    /// `{public_url}/announce`, the torrents' tracker.
    announce: String,
    /// The same tracker at the server's own HTTP address, which the seed announces to.
    local_announce: String,
    /// Where it listens; `explicit`: given by the admin (a taken port is then an error; the
    /// default one falls back to any free port, which agents learn from their task).
    listen: SocketAddr,
    explicit: bool,
    /// Upload limit, bytes per second; Some(0): no seeding.
    upload: Option<u64>,
    /// Peers uploaded to at once, per torrent.
    peers: usize,
    state_dir: PathBuf,
    data_dir: PathBuf,
    store: imaging::store::Store,
    session: tokio::sync::OnceCell<Arc<Session>>,
    /// Info hashes seeded.
    seeding: Mutex<HashSet<[u8; 20]>>,
}

impl Seeder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tracker: Arc<crate::serve::swarm::tracker::Tracker>,
        public_url: &str,
        http: SocketAddr,
        listen: SocketAddr,
        explicit: bool,
        upload: Option<u64>,
        peers: usize,
        data_dir: &std::path::Path,
        store: imaging::store::Store,
    ) -> Arc<Self> {
        Arc::new(Self {
            tracker,
            announce: format!("{}/announce", public_url.trim_end_matches('/')),
            local_announce: format!("http://{}/announce", reachable(http)),
            listen,
            explicit,
            upload,
            peers,
            state_dir: data_dir.join("bt"),
            data_dir: data_dir.to_path_buf(),
            store,
            session: tokio::sync::OnceCell::new(),
            seeding: Mutex::new(HashSet::new()),
        })
    }

    /// Whether the server uploads at all.
    pub(crate) fn enabled(&self) -> bool {
        self.upload != Some(0)
    }

    async fn session(&self) -> anyhow::Result<&Arc<Session>> {
        self.session
            .get_or_try_init(|| async {
                std::fs::create_dir_all(&self.state_dir).with_context(|| {
                    format!("creating the BitTorrent state {}", self.state_dir.display())
                })?;
                let opts = |listen| transport::swarm::SwarmOptions {
                    role: transport::swarm::Role::ServerSeed,
                    listen,
                    upload_bytes_per_sec: self.upload,
                    peer_limit: Some(self.peers),
                    state_dir: Some(self.state_dir.clone()),
                    default_storage: Some(transport::swarm::librqbit::storage::StorageFactoryExt::boxed(
                        transport::swarm::StoreStorageFactory {
                            store: self.store.clone(),
                        },
                    )),
                    trackers: true,
                };
                let s = match transport::swarm::session(opts(self.listen)).await {
                    Ok(s) => s,
                    Err(e) if !self.explicit => {
                        warn!(error = %format!("{e:#}"), "the default BitTorrent port is taken: seeding on another one");
                        let mut any = self.listen;
                        any.set_port(0);
                        transport::swarm::session(opts(any)).await?
                    }
                    Err(e) => return Err(e),
                };
                info!(listen = ?s.listen_addr(), "BitTorrent seed started");
                // Torrents seeded before the restart are back (their state was kept).
                let hashes: Vec<[u8; 20]> =
                    s.with_torrents(|it| it.map(|(_, t)| t.info_hash().0).collect());
                self.seeding.lock().expect("lock").extend(hashes);
                Ok(s)
            })
            .await
    }

    /// At server start: seeds again what was seeded before.
    pub(crate) async fn resume(&self) {
        if self.enabled() && self.state_dir.exists() {
            if let Err(e) = self.session().await {
                warn!(error = %format!("{e:#}"), "the BitTorrent seed did not start");
            }
        }
    }

    /// Image `reference`'s torrent, ready: built (or read from the cache), known to the
    /// tracker and seeded. Returns the `.torrent` and the image's label.
    pub(crate) async fn prepare(&self, reference: &str) -> ApiResult<(Vec<u8>, String)> {
        let (info, _id, label) =
            crate::serve::swarm::torrent::info(&self.store, &self.data_dir, reference).await?;
        self.tracker.know(imaging::torrent::info_hash(&info));
        self.seed(&info).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("seeding image {label}: {e:#}"),
            )
        })?;
        Ok((imaging::torrent::metainfo(&self.announce, &info), label))
    }

    /// Seeds the torrent of the info dictionary `info` (an image's, from [`crate::serve::swarm::torrent`]).
    async fn seed(&self, info: &[u8]) -> anyhow::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let hash = imaging::torrent::info_hash(info);
        let metainfo = imaging::torrent::metainfo(&self.local_announce, info);
        if self.seeding.lock().expect("lock").contains(&hash) {
            return Ok(());
        }
        let s = self.session().await?;
        let added = s
            .add_torrent(
                AddTorrent::TorrentFileBytes(metainfo.into()),
                Some(AddTorrentOptions {
                    overwrite: true,
                    // A stock client that announced is reached within seconds.
                    force_tracker_interval: Some(std::time::Duration::from_secs(5)),
                    ..Default::default()
                }),
            )
            .await
            .context("seeding the image's torrent")?;
        let handle = added.into_handle().context("no torrent handle")?;
        handle
            .wait_until_initialized()
            .await
            .context("checking the image's torrent against the store")?;
        let st = handle.stats();
        anyhow::ensure!(
            st.finished,
            "the store's bytes do not match the image's torrent ({} of {} bytes check)",
            st.progress_bytes,
            st.total_bytes
        );
        if self.seeding.lock().expect("lock").insert(hash) {
            info!(torrent = ?handle.name(), "seeding");
        }
        Ok(())
    }

    /// The port the seed listens on, when it seeds `info_hash`.
    pub(crate) fn port_for(&self, info_hash: &[u8; 20]) -> Option<u16> {
        if !self.seeding.lock().expect("lock").contains(info_hash) {
            return None;
        }
        self.session.get()?.listen_addr().map(|a| a.port())
    }

    /// Bytes uploaded to peers, per torrent name.
    pub(crate) fn uploaded(&self) -> Vec<(String, u64)> {
        let Some(s) = self.session.get() else {
            return Vec::new();
        };
        s.with_torrents(|it| {
            it.map(|(_, t)| (t.name().unwrap_or_default(), t.stats().uploaded_bytes))
                .collect()
        })
    }
}

/// An address of this host that reaches a server listening on `http` (an unspecified one is
/// reached through loopback).
fn reachable(http: SocketAddr) -> SocketAddr {
    let mut a = http;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a
}
