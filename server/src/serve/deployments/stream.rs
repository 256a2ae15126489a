//! Deployments straight from a machine's disk (`drover deploy --from MAC --to GROUP
//! [--keep-as NAME]`): two deployments tied together. The source machine gets a capture task
//! whose agent announces its disk's outline first (`POST /agent/capture/outline`), then
//! uploads each chunk as it reads it, saying where it goes; the targets get a restore task
//! whose image is `stream:{capture id}`. When the outline comes, the restore deployment's
//! multicast session starts with a [`Source::Live`]: each chunk is sent once the source
//! uploaded it (checked against its hash and stored), as its hash and plaintext, so the
//! receivers check it before they write it. Stragglers fetch chunks by their place
//! (`GET /agent/stream/{i}`). When the source commits, its manifest must list what was sent;
//! the targets compare what they wrote with it. `--keep-as` commits it as an image; without
//! it the chunks are left to `drover image gc`.
//!
//! The link lives in this server's memory: after a restart both deployments are cancelled,
//! saying why (deploy again). The source failing or either deployment being cancelled ends
//! both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use imaging::manifest::Manifest;
use proto::api::{Fallback, Personalize, Transport};
use transport::live::Live;
use transport::session::Source;

use crate::serve::deployments::repo::{Deployment, NewDeployment};
use crate::serve::deployments::service::{check_image_name, DeployError, DeployRequest, Deployer};
use crate::serve::inventory::mac::Mac;

/// A source that uploads nothing for this long fails its stream.
pub(crate) const SOURCE_SILENT: Duration = Duration::from_secs(60);

/// The image id of a restore deployment fed by a stream: this, then its capture's id.
pub(crate) const IMAGE_PREFIX: &str = "stream:";

/// One deployment from a machine's disk.
pub(crate) struct Stream {
    /// The source's capture deployment.
    pub(crate) capture: String,
    /// The targets' restore deployment.
    pub(crate) restore: String,
    pub(crate) source: Mac,
    /// `--keep-as`: the capture is committed as an image.
    pub(crate) keep: bool,
    live: tokio::sync::watch::Sender<Option<Arc<Live>>>,
    failed: Mutex<Option<String>>,
    /// The id of the image kept, once committed.
    pub(crate) kept: Mutex<Option<String>>,
    /// A shared hold on the store while the stream runs: `drover image gc` waits for it (the
    /// chunks it sends belong to no image until the source commits, and never do without
    /// `--keep-as`).
    hold: Mutex<Option<imaging::store::StoreLock>>,
}

impl Stream {
    /// The stream, once its outline came.
    pub(crate) fn live(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone()
    }

    /// Why the stream failed, if it did.
    pub(crate) fn failed(&self) -> Option<String> {
        let own = self.failed.lock().expect("lock").clone();
        own.or_else(|| self.live().and_then(|l| l.failed()))
    }

    /// Ends the stream: everything waiting on it fails with `why`.
    pub(crate) fn fail(&self, why: &str) {
        self.failed
            .lock()
            .expect("lock")
            .get_or_insert_with(|| why.to_string());
        if let Some(l) = self.live() {
            l.fail(why);
        }
        // Wakes those waiting for the outline.
        self.live.send_modify(|_| {});
    }

    /// The stream once its outline is in, waiting up to `wait` (None: not yet). A failed
    /// stream is an error naming why.
    pub(crate) async fn wait_live(&self, wait: Duration) -> Result<Option<Arc<Live>>, String> {
        let mut rx = self.live.subscribe();
        let r = tokio::time::timeout(wait, async {
            loop {
                if let Some(why) = self.failed() {
                    return Err(why);
                }
                if let Some(l) = rx.borrow_and_update().clone() {
                    return Ok(l);
                }
                if rx.changed().await.is_err() {
                    return Err("the stream ended".to_string());
                }
            }
        })
        .await;
        match r {
            Ok(Ok(l)) => Ok(Some(l)),
            Ok(Err(why)) => Err(why),
            Err(_) => Ok(None),
        }
    }
}

impl Deployer {
    /// The stream whose source's capture deployment is `id`.
    pub(crate) fn stream_by_capture(&self, id: &str) -> Option<Arc<Stream>> {
        let s = self.streams.lock().expect("lock");
        s.iter().find(|s| s.capture == id).cloned()
    }

    /// The stream that feeds restore deployment `id`.
    pub(crate) fn stream_by_restore(&self, id: &str) -> Option<Arc<Stream>> {
        let s = self.streams.lock().expect("lock");
        s.iter().find(|s| s.restore == id).cloned()
    }

    /// The stream of either of its deployments.
    pub(crate) fn stream_of(&self, id: &str) -> Option<Arc<Stream>> {
        self.stream_by_capture(id)
            .or_else(|| self.stream_by_restore(id))
    }

    /// Forgets the streams whose two deployments are over (and lets gc run).
    pub(crate) async fn prune_streams(&self) {
        let all: Vec<Arc<Stream>> = self.streams.lock().expect("lock").clone();
        let mut over = Vec::new();
        for s in all {
            let mut active = false;
            for id in [&s.capture, &s.restore] {
                active |= self
                    .db
                    .deployments()
                    .deployment(id)
                    .await
                    .is_ok_and(|d| d.state.active());
            }
            if !active {
                over.push(s.restore.clone());
            }
        }
        self.streams.lock().expect("lock").retain(|s| {
            let keep = !over.contains(&s.restore);
            if !keep {
                s.hold.lock().expect("lock").take();
            }
            keep
        });
    }

    /// `drover deploy --from MAC`: checks the request like any deployment's, then creates the
    /// source's capture deployment and the targets' restore deployment.
    pub(crate) async fn create_stream(
        self: &Arc<Self>,
        from: &str,
        keep_as: Option<String>,
        r: DeployRequest,
        actor: &str,
    ) -> Result<Deployment, DeployError> {
        let source: Mac = from
            .trim()
            .parse()
            .map_err(|_| DeployError::Bad(format!("--from {from:?} is not a MAC address")))?;
        if !r.image.is_empty() {
            return Err(DeployError::Bad(format!(
                "deploy either image {:?} or the disk of {source}, not both",
                r.image
            )));
        }
        if r.transport == Transport::Bittorrent || r.fallback == Fallback::Bittorrent {
            return Err(DeployError::Bad(
                "a deployment from a machine's disk goes over multicast or unicast: a swarm \
                 shares the pieces of a stored image"
                    .into(),
            ));
        }
        if r.transport == Transport::Multicast && self.iface.is_none() {
            return Err(DeployError::Conflict(
                "multicast is off: the server has no lab interface (start it with --iface), \
                 or deploy with --transport unicast"
                    .into(),
            ));
        }
        if let Some(n) = &keep_as {
            check_image_name(n).map_err(|e| DeployError::Bad(format!("--keep-as {e}")))?;
        }
        self.db.inventory().machine(source).await.map_err(|_| {
            DeployError::NotFound(format!(
                "machine {source} is not in the inventory (drover machine add {source})"
            ))
        })?;
        let macs: Vec<Mac> = self
            .resolve_targets(&r.targets)
            .await?
            .into_iter()
            .filter(|m| *m != source)
            .collect();
        if macs.is_empty() {
            return Err(DeployError::Bad(format!(
                "no targets but the source {source} itself"
            )));
        }
        super::personalize::check(&self.db, &r.personalize, &macs).await?;
        if let Some(n) = r.min_machines {
            if n < 1 || n as usize > macs.len() {
                return Err(DeployError::Bad(format!(
                    "min machines {n}: between 1 and the {} machine(s) targeted",
                    macs.len()
                )));
            }
        }
        self.prune_streams().await;
        let name = keep_as
            .clone()
            .unwrap_or_else(|| format!("from-{}", source.to_string().replace(':', "")));
        let store = self.store()?;
        let hold = tokio::task::spawn_blocking(move || store.lock_shared())
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)?;
        let capture = self
            .db
            .deployments()
            .create_deployment(
                &NewDeployment {
                    kind: "capture",
                    image_id: "",
                    image_name: &name,
                    targets: &source.to_string(),
                    transport: "unicast",
                    fallback: "unicast",
                    min_machines: None,
                    max_wait_ms: None,
                    start_at_ms: None,
                    then_action: r.then_action.as_str(),
                    layout: None,
                    owner: &self.owner,
                    created_by: actor,
                    bytes_total: 0,
                    personalize: &Personalize {
                        enabled: false,
                        ..Personalize::default()
                    },
                },
                &[source],
            )
            .await?;
        let restore = self
            .db
            .deployments()
            .create_deployment(
                // Its bytes are known once the source has read its disk's allocation.
                &r.restore_row(
                    &format!("{IMAGE_PREFIX}{}", capture.id),
                    &format!("disk of {source}"),
                    &r.targets.join(","),
                    &self.owner,
                    actor,
                    0,
                ),
                &macs,
            )
            .await;
        let restore = match restore {
            Ok(d) => d,
            Err(e) => {
                // A target busy elsewhere: the source's task goes too.
                let _ = self
                    .db
                    .deployments()
                    .cancel_deployment(&capture.id, "its targets could not be given tasks")
                    .await;
                return Err(match e {
                    crate::serve::db::DbError::Exists(w) => DeployError::Conflict(w),
                    e => e.into(),
                });
            }
        };
        self.streams.lock().expect("lock").push(Arc::new(Stream {
            capture: capture.id.clone(),
            restore: restore.id.clone(),
            source,
            keep: keep_as.is_some(),
            live: tokio::sync::watch::channel(None).0,
            failed: Mutex::new(None),
            kept: Mutex::new(None),
            hold: Mutex::new(Some(hold)),
        }));
        self.db
            .audit(
                actor,
                "deployment.create",
                &format!(
                    "{} the disk of {source} (read by capture {}{}) to {} via {} ({} machine(s))",
                    restore.id,
                    capture.id,
                    keep_as
                        .map(|n| format!(", kept as image {n:?}"))
                        .unwrap_or_default(),
                    restore.targets,
                    restore.transport,
                    macs.len()
                ),
            )
            .await?;
        let mut all = macs;
        all.push(source);
        self.tasks_created(all);
        self.changed(&capture.id);
        self.changed(&restore.id);
        Ok(self.db.deployments().deployment(&restore.id).await?)
    }

    /// The source announced its outline: the stream starts (a multicast session for the
    /// targets that streams each chunk once it is uploaded).
    pub(crate) async fn stream_outlined(
        self: &Arc<Self>,
        s: &Arc<Stream>,
        outline: Manifest,
    ) -> Result<(), DeployError> {
        if let Some(l) = s.live() {
            // Told again (the answer was lost): the same outline is harmless.
            return match l.outline().areas == outline.areas {
                true => Ok(()),
                false => Err(DeployError::Conflict(
                    "the stream's outline was announced already, and differently".into(),
                )),
            };
        }
        let live = Arc::new(
            Live::new(outline)
                .map_err(|e| DeployError::Bad(format!("the outline is invalid: {e:#}")))?,
        );
        let total = (0..live.chunks())
            .map(|i| live.plain_len(i).unwrap_or(0) as i64)
            .sum::<i64>();
        sqlx::query("UPDATE tasks SET bytes_total = $1 WHERE deployment_id = $2")
            .bind(total)
            .bind(&s.restore)
            .execute(&self.db.pool)
            .await
            .map_err(anyhow::Error::from)?;
        s.live.send_replace(Some(live.clone()));
        self.watch_stream(s.clone(), live.clone());
        let d = self.db.deployments().deployment(&s.restore).await?;
        if d.transport == Transport::Multicast && d.state.active() {
            let machines = self.db.deployments().tasks_of(&d.id).await?.len();
            let source = Source::Live {
                store: self.store()?,
                live,
            };
            if let Err(e) = self.start_session_with(&d, machines, source).await {
                // The machines still get every chunk, over unicast.
                tracing::warn!(deployment = %d.id, error = %format!("{e:#}"), "no multicast session for the stream: its machines use unicast");
            }
        }
        self.changed(&s.restore);
        Ok(())
    }

    /// Fails stream `s` when its source sends nothing for [`SOURCE_SILENT`] before it
    /// commits (its agent died, its machine was switched off): the targets stop rather than
    /// wait.
    fn watch_stream(self: &Arc<Self>, s: Arc<Stream>, live: Arc<Live>) {
        let this = self.clone();
        let span = tracing::info_span!("stream", capture = %s.capture, restore = %s.restore);
        self.tasks.spawn(span, async move {
            let mut last = (live.placed(), tokio::time::Instant::now());
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if live.finished().is_some() || s.failed().is_some() {
                    return Ok(());
                }
                let placed = live.placed();
                if placed != last.0 {
                    last = (placed, tokio::time::Instant::now());
                } else if last.1.elapsed() >= SOURCE_SILENT {
                    let why = format!(
                        "it sent nothing for {} s ({placed} of {} chunks sent, nothing committed)",
                        SOURCE_SILENT.as_secs(),
                        live.chunks()
                    );
                    tracing::warn!("the source machine {} {why}", s.source);
                    this.stream_failed(&s, &why).await;
                    return Ok(());
                }
            }
        });
    }

    /// Ends stream `s` (its source failed, or one of its deployments was cancelled): the
    /// other deployment is cancelled too, saying why.
    pub(crate) async fn stream_failed(&self, s: &Stream, why: &str) {
        s.fail(why);
        for (id, what) in [
            (&s.restore, "the source machine"),
            (&s.capture, "the stream"),
        ] {
            let reason = format!("{what} stopped: {why}");
            if let Ok(true) = self.db.deployments().cancel_deployment(id, &reason).await {
                self.stop_session(id).await;
                self.changed(id);
            }
        }
    }
}
