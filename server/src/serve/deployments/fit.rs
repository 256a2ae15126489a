//! Deployments onto disks smaller than the image's layout: the agent says its disk's size
//! when it asks for the manifest (`GET /agent/manifest?disk_size=N`); when the image does not
//! fit as captured, the server derives the image fitted to that size once (the filesystems
//! shrunk with their own tools, as `drover image restore` does onto a smaller disk, into a
//! sparse scratch file, then captured into the store: the chunks of the partitions that keep
//! their size deduplicate) and hands that machine the fitted image, over unicast. Machines of
//! one disk size share one derivation; while it runs the agent is told to ask again (503),
//! and a disk too small for the used data fails its task with the shrink's reason (409).
//!
//! The fitted image is an ordinary image in the store, named `{name}.v{version}.fit-{bytes}`.
//! Not here: shrinking in the agent (it has no store to stage partitions from).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use imaging::capture::{capture, CaptureOptions};
use imaging::device::FileDevice;
use imaging::progress::NoProgress;
use imaging::shrink;
use imaging::store::Store;
use tracing::{info, warn};

use crate::serve::deployments::service::Deployer;

/// Where fitting an image to one disk size stands.
#[derive(Debug, Clone)]
pub(crate) enum Fit {
    /// Being derived: ask again.
    Making,
    /// The fitted image's id.
    Ready(String),
    /// Why it cannot be.
    Failed(String),
}

impl Deployer {
    /// Image `image_id` fitted to a disk of `disk` bytes: started on the first ask, then
    /// where it stands.
    pub(crate) fn fit(self: &Arc<Self>, image_id: &str, disk: u64) -> Fit {
        let key = (image_id.to_string(), disk);
        let mut fits = self.fits.lock().expect("lock");
        if let Some(f) = fits.get(&key) {
            return f.clone();
        }
        fits.insert(key.clone(), Fit::Making);
        drop(fits);
        let this = self.clone();
        let (store, scratch) = (self.store.clone(), self.scratch_dir());
        let span = tracing::info_span!("fit", image = %image_id, disk);
        self.tasks.spawn(span, async move {
            let id = key.0.clone();
            let r = tokio::task::spawn_blocking(move || derive(&store, &scratch, &id, disk))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            let f = match r {
                Ok(id) => {
                    info!(fitted = %id, "image fitted to a smaller disk");
                    Fit::Ready(id)
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "the image cannot be fitted to the disk");
                    Fit::Failed(format!("{e:#}"))
                }
            };
            this.fits.lock().expect("lock").insert(key, f);
            Ok(())
        });
        Fit::Making
    }

    /// The fitted versions of image `of` made here.
    pub(crate) fn fitted_of(&self, of: &str) -> Vec<String> {
        self.fits
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|((o, _), f)| match f {
                Fit::Ready(id) if o == of => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Where fitted disks are staged: in the data directory.
    fn scratch_dir(&self) -> PathBuf {
        self.data_dir().join("scratch")
    }
}

/// Restores image `image_id` shrunk onto a sparse file of `disk` bytes and captures it: the
/// fitted image's id.
fn derive(store: &Store, scratch: &Path, image_id: &str, disk: u64) -> anyhow::Result<String> {
    let img = store.resolve(image_id)?;
    let m = &img.manifest;
    let label = format!("{}@{}", m.name, m.name_version);
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut s = shrink::Scratch::new(scratch, 0)?;
    let mins = shrink::minimums(&label, m, store, &mut s, Some(disk))
        .with_context(|| format!("finding how far {label} can shrink"))?;
    let plan = shrink::plan(&label, m, disk, &mins)?;
    let file = Staged(scratch.join(format!(
        "fitted-{}-{disk}.img",
        &img.id[..img.id.len().min(16)]
    )));
    std::fs::File::create(&file.0)
        .and_then(|f| f.set_len(disk))
        .with_context(|| format!("creating {} of {disk} bytes", file.0.display()))?;
    {
        let dev = FileDevice::open_write(&file.0)?;
        shrink::restore_shrunk(&label, m, store, &[&dev], &plan, &mut s, &NoProgress)
            .with_context(|| format!("restoring {label} shrunk to {disk} bytes"))?;
    }
    let dev = FileDevice::open_read(&file.0)?;
    let opts = CaptureOptions::new(format!("{}.v{}.fit-{disk}", m.name, m.name_version));
    let c = capture(
        &dev,
        &format!("{label} fitted to {disk} bytes"),
        store,
        &opts,
        &NoProgress,
    )
    .with_context(|| format!("storing {label} fitted to {disk} bytes"))?;
    Ok(c.id)
}

/// A staged file, removed when done with (or on failure).
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
