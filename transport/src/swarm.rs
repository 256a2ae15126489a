//! BitTorrent swarms of image torrents, through librqbit: the session drover runs (no DHT, no
//! local service discovery, no UPnP, IPv4 TCP only, the server's tracker as the only one) and
//! the two storages behind an image torrent ([`imaging::torrent`]'s layout: one torrent file
//! per used extent, named by its disk offset):
//!
//! - [`DiskStorage`], the agent's: every torrent file is its extent of the target disk, so
//!   pieces are written straight to the disk (a piece that fails its hash is simply written
//!   again when it is fetched again) and uploaded from it. Nothing is kept in memory.
//! - [`StoreStorage`], the server's: reads the image's bytes from the chunk store,
//!   decompressing chunks on the way (a few recent ones kept), and refuses writes.
//!
//! A write or read outside the image's extents is refused: whatever a peer sends, only the
//! image's used extents of the disk are ever touched. Which swarm to join, when to stop
//! seeding and what to do when it stalls are the callers' decisions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use imaging::device::{BlockDevice, FileDevice};
use imaging::manifest::Manifest;
use imaging::store::Store;
use imaging::torrent::{ChunkCache, Extent, ImageReader, Payload};
pub use librqbit;
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{ManagedTorrentShared, Session, SessionOptions, TorrentMetadata};

/// The torrent name of an image: `drover-{image id}`.
pub fn torrent_name(image_id: &str) -> String {
    format!("drover-{image_id}")
}

/// Who runs a swarm session; its peer id says so (`-DA` for an agent, `-DS` for the server's
/// seed, then the version, Azureus style), so the server's tracker tells drover's own peers
/// from stock clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    ServerSeed,
}

impl Role {
    const fn prefix(self) -> &'static [u8; 3] {
        match self {
            Self::Agent => b"-DA",
            Self::ServerSeed => b"-DS",
        }
    }

    /// A fresh peer id of this role: the 8-byte client prefix, then random bytes.
    pub fn peer_id(self) -> librqbit::dht::Id20 {
        let mut fingerprint = *b"-DA0000-";
        fingerprint[..3].copy_from_slice(self.prefix());
        let digits = env!("CARGO_PKG_VERSION")
            .split('.')
            .filter_map(|p| p.parse::<u8>().ok())
            .chain(std::iter::repeat(0));
        for (slot, d) in fingerprint[3..7].iter_mut().zip(digits) {
            *slot = b'0' + d.min(9);
        }
        librqbit::generate_peer_id(&fingerprint)
    }

    /// The role of a peer id drover made, or None for any other client's.
    pub fn of(peer_id: &[u8; 20]) -> Option<Self> {
        [Self::Agent, Self::ServerSeed]
            .into_iter()
            .find(|r| peer_id.starts_with(r.prefix()) && peer_id[7] == b'-')
    }
}

/// How a swarm session runs.
pub struct SwarmOptions {
    /// Whose session (its peer id).
    pub role: Role,
    /// TCP address peers connect to (port 0: any free one).
    pub listen: SocketAddr,
    /// Upload limit of the whole session, bytes per second.
    pub upload_bytes_per_sec: Option<u64>,
    /// Peers per torrent at most.
    pub peer_limit: Option<usize>,
    /// Where the session keeps its torrents and their pieces' state (fastresume), so a
    /// restart neither forgets nor re-hashes them. None: nothing kept.
    pub state_dir: Option<PathBuf>,
    /// The storage of torrents added without one (and of those the state brings back).
    pub default_storage: Option<BoxStorageFactory>,
    /// Announce to the torrents' trackers (a server seeding alone needs none: its peers
    /// find it through its own tracker).
    pub trackers: bool,
}

/// Starts a session.
pub async fn session(o: SwarmOptions) -> anyhow::Result<Arc<Session>> {
    let folder = o.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    let rate = o
        .upload_bytes_per_sec
        .map(|b| std::num::NonZeroU32::new(b.clamp(64 << 10, u64::from(u32::MAX)) as u32))
        .unwrap_or_default();
    let opts = SessionOptions {
        peer_id: Some(o.role.peer_id()),
        dht: None,
        disable_trackers: !o.trackers,
        fastresume: o.state_dir.is_some(),
        persistence: o
            .state_dir
            .map(|d| librqbit::SessionPersistenceConfig::Json { folder: Some(d) }),
        listen: Some(librqbit::ListenerOptions {
            mode: librqbit::ListenerMode::TcpOnly,
            listen_addr: o.listen,
            enable_upnp_port_forwarding: false,
            ipv4_only: true,
            ..Default::default()
        }),
        default_storage_factory: o.default_storage,
        ratelimits: librqbit::limits::LimitsConfig {
            upload_bps: rate,
            download_bps: None,
        },
        peer_limit: o.peer_limit,
        disable_local_service_discovery: true,
        ipv4_only: true,
        client_name_and_version: Some(format!("drover {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    Session::new_with_opts(folder, opts)
        .await
        .with_context(|| format!("starting the BitTorrent session on {}", o.listen))
}

/// Checks that the torrent's files are the image's extents, in order (by name and length).
fn check_files(metadata: &TorrentMetadata, extents: &[Extent]) -> anyhow::Result<()> {
    let files = &metadata.file_infos;
    ensure!(
        files.len() == extents.len(),
        "the torrent has {} file(s), the image {} extent(s)",
        files.len(),
        extents.len()
    );
    for (i, (f, e)) in files.iter().zip(extents).enumerate() {
        let name = f
            .relative_filename
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ensure!(
            name == e.name() && f.len == e.len,
            "torrent file {i} is {name:?} of {} bytes, the image's extent {} of {} bytes",
            f.len,
            e.name(),
            e.len
        );
    }
    Ok(())
}

/// The disk bytes of torrent file `file_id` at `offset`, `len` long, if they lie inside it.
fn place(extents: &[Extent], file_id: usize, offset: u64, len: usize) -> anyhow::Result<u64> {
    let e = extents
        .get(file_id)
        .with_context(|| format!("torrent file {file_id} is not in the image"))?;
    ensure!(
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= e.len),
        "bytes {offset}..+{len} lie outside torrent file {} ({} bytes)",
        e.name(),
        e.len
    );
    Ok(e.disk_offset + offset)
}

/// Torrent file `file_id` must be its extent's length (the files never grow or shrink).
fn check_length(extents: &[Extent], file_id: usize, length: u64) -> anyhow::Result<()> {
    let e = extents.get(file_id).context("no such torrent file")?;
    ensure!(
        e.len == length,
        "torrent file {} is {} bytes, not {length}",
        e.name(),
        e.len
    );
    Ok(())
}

/// The agent's storage: the image's extents on the target disk.
#[derive(Clone)]
pub struct DiskStorage {
    dev: Arc<FileDevice>,
    extents: Arc<Vec<Extent>>,
}

impl DiskStorage {
    /// The storage of `manifest`'s torrent on the disk (or file) at `path`, opened for
    /// writing. The caller has checked that the disk fits the image.
    pub fn open(path: &Path, manifest: &Manifest) -> anyhow::Result<Self> {
        let dev = FileDevice::open_write(path)
            .with_context(|| format!("opening {} for writing", path.display()))?;
        let extents = Payload::of(manifest).extents;
        if let Some(last) = extents.last() {
            ensure!(
                last.disk_offset + last.len <= dev.len(),
                "{} holds {} bytes, the image reaches byte {}",
                path.display(),
                dev.len(),
                last.disk_offset + last.len
            );
        }
        Ok(Self {
            dev: Arc::new(dev),
            extents: Arc::new(extents),
        })
    }
}

impl StorageFactory for DiskStorage {
    type Storage = Self;

    fn create(&self, _: &ManagedTorrentShared, metadata: &TorrentMetadata) -> anyhow::Result<Self> {
        check_files(metadata, &self.extents)?;
        Ok(self.clone())
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

impl TorrentStorage for DiskStorage {
    fn init(&mut self, _: &ManagedTorrentShared, _: &TorrentMetadata) -> anyhow::Result<()> {
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let at = place(&self.extents, file_id, offset, buf.len())?;
        Ok(self.dev.read_at(buf, at)?)
    }

    fn pwrite_all(&self, file_id: usize, offset: u64, buf: &[u8]) -> anyhow::Result<()> {
        let at = place(&self.extents, file_id, offset, buf.len())?;
        Ok(self.dev.write_at(buf, at)?)
    }

    fn remove_file(&self, _: usize, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn remove_directory_if_empty(&self, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> anyhow::Result<()> {
        check_length(&self.extents, file_id, length)
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(self.clone()))
    }
}

/// Decompressed chunks the server keeps per seeded image: 128 MiB of them.
const CACHE_BYTES: u64 = 128 << 20;

/// The server's storage factory: a torrent named `drover-{id}` is image `id` of the store.
#[derive(Clone)]
pub struct StoreStorageFactory {
    /// The image store.
    pub store: Store,
}

/// The server's storage of one image torrent: reads from the chunk store.
#[derive(Clone)]
pub struct StoreStorage {
    store: Arc<Store>,
    manifest: Arc<Manifest>,
    extents: Arc<Vec<Extent>>,
    cache: Arc<ChunkCache>,
}

impl StorageFactory for StoreStorageFactory {
    type Storage = StoreStorage;

    fn create(
        &self,
        _: &ManagedTorrentShared,
        metadata: &TorrentMetadata,
    ) -> anyhow::Result<StoreStorage> {
        let name = metadata.info.name().unwrap_or_default();
        let Some(id) = name.strip_prefix("drover-") else {
            bail!("torrent {name:?} is not one of drover's images");
        };
        let store = self.store.clone();
        let img = store
            .resolve(id)
            .with_context(|| format!("the image of torrent {name}"))?;
        ensure!(img.id == id, "torrent {name}: no image has exactly this id");
        let extents = Payload::of(&img.manifest).extents;
        check_files(metadata, &extents)?;
        let chunks = (CACHE_BYTES / img.manifest.chunk_size.max(1)).max(2) as usize;
        Ok(StoreStorage {
            store: Arc::new(store),
            manifest: Arc::new(img.manifest),
            extents: Arc::new(extents),
            cache: Arc::new(ChunkCache::new(chunks)),
        })
    }

    /// librqbit's session persistence (which keeps the torrents and their piece bitfields,
    /// fastresume) takes filesystem storages only, for their data is still there after a
    /// restart. So is the store's: this storage passes for one, and the session brings its
    /// torrents back with the session's default storage — this factory — unchecked.
    fn is_type_id(&self, type_id: std::any::TypeId) -> bool {
        type_id == std::any::TypeId::of::<Self>()
            || type_id
                == std::any::TypeId::of::<librqbit::storage::filesystem::FilesystemStorageFactory>()
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

impl TorrentStorage for StoreStorage {
    fn init(&mut self, _: &ManagedTorrentShared, _: &TorrentMetadata) -> anyhow::Result<()> {
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let at = place(&self.extents, file_id, offset, buf.len())?;
        ImageReader::new(&self.store, &self.manifest, &self.cache).read_at(at, buf)?;
        Ok(())
    }

    fn pwrite_all(&self, file_id: usize, _: u64, _: &[u8]) -> anyhow::Result<()> {
        bail!("torrent file {file_id}: the server's image store is not written by the swarm")
    }

    fn remove_file(&self, _: usize, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn remove_directory_if_empty(&self, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> anyhow::Result<()> {
        check_length(&self.extents, file_id, length)
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_say_who_made_them() {
        for role in [Role::Agent, Role::ServerSeed] {
            let id = role.peer_id().0;
            assert_eq!(
                Role::of(&id),
                Some(role),
                "{:?}",
                String::from_utf8_lossy(&id)
            );
            assert_ne!(id, role.peer_id().0, "ids are random after the prefix");
        }
        assert_eq!(&Role::Agent.peer_id().0[..8], b"-DA0100-");
        assert_eq!(Role::of(b"-TR3000-am0efbgnr8ke"), None);
        assert_eq!(Role::of(b"-DA-something-else--"), None);
    }

    #[test]
    fn bytes_outside_the_extents_are_refused() {
        let ex = [
            Extent {
                disk_offset: 4096,
                len: 1000,
            },
            Extent {
                disk_offset: 1 << 20,
                len: 10,
            },
        ];
        assert_eq!(place(&ex, 0, 0, 1000).unwrap(), 4096);
        assert_eq!(place(&ex, 1, 4, 6).unwrap(), (1 << 20) + 4);
        let e = place(&ex, 0, 1, 1000).unwrap_err().to_string();
        assert!(e.contains("outside torrent file 0000000000001000"), "{e}");
        assert!(place(&ex, 2, 0, 1).is_err());
        assert!(place(&ex, 1, u64::MAX, 2).is_err());
    }
}
