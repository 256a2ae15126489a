//! The images service: lists the store's image versions and verifies one, off the async
//! threads (both read the store's files).

use imaging::store::Store;

use crate::serve::db::DbError;

/// The daemon's image store.
pub(crate) struct Images {
    store: Store,
}

impl Images {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Reads the image store (images captured by the CLI, or by another server sharing the
    /// store, show up at once).
    pub(crate) async fn list(&self) -> anyhow::Result<Vec<proto::api::Image>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || scan(&store)).await?
    }

    /// Every chunk of the image re-read, decompressed and re-hashed from the store (never from
    /// the server's cache: it checks what the store holds); the bad ones listed. An unknown or
    /// ambiguous reference is `NotFound`.
    pub(crate) async fn verify(
        &self,
        reference: String,
    ) -> Result<proto::api::ImageVerified, DbError> {
        let store = self.store.bypassing_cache();
        tokio::task::spawn_blocking(move || verify(&store, &reference))
            .await
            .map_err(anyhow::Error::from)?
    }
}

fn scan(store: &Store) -> anyhow::Result<Vec<proto::api::Image>> {
    let (all, problems) = store.scan()?;
    for p in problems {
        tracing::warn!(error = %anyhow::Error::from(p), "damaged image manifest");
    }
    // How many images hold each chunk: an image's chunks held by another are shared
    // (stored once).
    let mut holders = std::collections::HashMap::<&imaging::manifest::Hash, usize>::new();
    for i in &all {
        let mine: std::collections::HashSet<_> =
            i.manifest.chunks().map(|(_, c)| &c.hash).collect();
        for h in mine {
            *holders.entry(h).or_default() += 1;
        }
    }
    Ok(all
        .iter()
        .map(|i| {
            let m = &i.manifest;
            let mut filesystems: Vec<String> = m
                .areas
                .iter()
                .filter_map(|a| a.fs.as_ref().map(|f| f.kind.to_string()))
                .collect();
            filesystems.dedup();
            let shared = m
                .chunks()
                .filter(|(_, c)| holders.get(&c.hash).is_some_and(|n| *n > 1))
                .count();
            proto::api::Image {
                id: i.id.clone(),
                name: m.name.clone(),
                version: m.name_version,
                created: m.created,
                size: m.disk_size,
                used_bytes: m.used_bytes(),
                stored_bytes: m.stored_bytes(),
                chunks: m.chunks().count() as u64,
                shared_chunks: shared as u64,
                filesystems,
                source: m.source.clone(),
            }
        })
        .collect())
}

fn verify(store: &Store, reference: &str) -> Result<proto::api::ImageVerified, DbError> {
    let img = store.resolve(reference).map_err(|e| match e {
        imaging::store::StoreError::NotFound(_) | imaging::store::StoreError::Ambiguous(_) => {
            DbError::NotFound(e.to_string())
        }
        e => anyhow::Error::from(e).into(),
    })?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let v = imaging::restore::verify(
        &img.manifest,
        store,
        threads,
        &imaging::progress::NoProgress,
    );
    Ok(proto::api::ImageVerified {
        ok: v.bad.is_empty(),
        id: img.id,
        name: img.manifest.name,
        version: img.manifest.name_version,
        chunks: v.chunks,
        bad: v
            .bad
            .into_iter()
            .map(|b| proto::api::BadChunk {
                hash: b.hash.to_hex(),
                disk_offset: b.disk_offset,
                error: b.error,
            })
            .collect(),
    })
}
