//! Capture over the network (the golden-machine flow): `POST /api/v1/captures` gives a machine
//! a capture task (a deployment of kind `capture`, one task, transport unicast, the image
//! name as its image). Its agent reads its disk, asks which chunks the server already has
//! (`POST /agent/capture/have`), uploads the others as zstd frames (`PUT
//! /agent/capture/chunks/{hash}?len=N`, each checked against its hash before it is kept),
//! and sends the manifest last (`POST /agent/capture/commit`): the server checks that every
//! chunk is there, numbers the version and commits it (once per task: a repeated commit
//! answers with the same image); the agent then reports its result as any task does. An
//! upload that stops half-way leaves chunks but no image; the next try uploads only what is
//! still missing.
//!
//! Not done here: delta chunks (a CLI capture stores a changed chunk as a delta against the
//! previous version; uploaded chunks are stored whole).

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use imaging::manifest::{Hash, Manifest};
use imaging::store::Store;
use proto::api::{self, ChunkStored, Committed, ErrorBody, HaveReply, HaveRequest, Personalize};
use serde::Deserialize;
use sqlx::Row;

use crate::serve::db::{now_ms, DbError};
use crate::serve::deployments::api::{task_over, AgentTask};
use crate::serve::deployments::repo::{Deployment, NewDeployment};
use crate::serve::deployments::service::{check_image_name, DeployError};
use crate::serve::deployments::stream::{Stream, IMAGE_PREFIX};
use crate::serve::web::api::{parse_mac, Actor, ApiError, ApiResult, Shared};
use transport::live::Live;

/// Hashes one `have` call may ask about.
const MAX_HAVE: usize = 4096;
/// LUKS passphrases one capture may carry, and the longest (cryptsetup reads key files of up
/// to 8 MiB; real ones are a passphrase or a few KiB of random bytes).
const MAX_LUKS_KEYS: usize = 16;
const MAX_LUKS_KEY: usize = 64 << 10;
/// Free space the store keeps beyond an uploaded chunk.
const RESERVE: u64 = imaging::capture::SPACE_RESERVE;

/// `POST /api/v1/captures`: gives the machine a capture task.
#[utoipa::path(post, path = "/captures", tag = "deployments",
    summary = "Capture a machine's disk over the network: gives it a capture task (a deployment of kind capture); its agent uploads the chunks the server lacks and commits the image",
    request_body = api::NewCapture,
    responses((status = 201, description = "the capture deployment", body = api::Deployment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<api::NewCapture>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(c) = body?;
    let mac = parse_mac(&c.mac)?;
    check_image_name(&c.name).map_err(|e| ApiError::bad_request(format!("image name {e}")))?;
    if c.luks_keys.0.len() > MAX_LUKS_KEYS {
        return Err(ApiError::bad_request(format!(
            "{} LUKS keys: at most {MAX_LUKS_KEYS}",
            c.luks_keys.0.len()
        )));
    }
    for (i, k) in c.luks_keys.0.iter().enumerate() {
        use base64::Engine;
        match base64::engine::general_purpose::STANDARD.decode(k) {
            Ok(b) if !b.is_empty() && b.len() <= MAX_LUKS_KEY => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "LUKS key {}: the base64 of 1 byte to {} KiB",
                    i + 1,
                    MAX_LUKS_KEY >> 10
                )))
            }
        }
    }
    s.db.inventory().machine(mac).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine {mac} is not in the inventory (drover machine add {mac})"),
        )
    })?;
    // Two captures of one name at once would both take the same version number.
    let busy = sqlx::query(
        "SELECT id FROM deployments WHERE kind = 'capture' AND image_name = $1 \
         AND state IN ('waiting', 'running')",
    )
    .bind(&c.name)
    .fetch_optional(&s.db.pool)
    .await
    .map_err(anyhow::Error::from)?;
    if let Some(r) = busy {
        let other: String = r.try_get("id").map_err(anyhow::Error::from)?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "image {:?} is being captured already (deployment {other})",
                c.name
            ),
        ));
    }
    let d =
        s.db.deployments()
            .create_deployment(
                &NewDeployment {
                    kind: "capture",
                    image_id: "",
                    image_name: &c.name,
                    targets: &mac.to_string(),
                    transport: "unicast",
                    fallback: "unicast",
                    min_machines: None,
                    max_wait_ms: None,
                    start_at_ms: None,
                    then_action: c.then.as_str(),
                    layout: None,
                    owner: &s.deployer.owner,
                    created_by: &actor.0,
                    bytes_total: 0,
                    // A capture reads the disk: nothing to personalize.
                    personalize: &Personalize {
                        enabled: false,
                        ..Personalize::default()
                    },
                },
                &[mac],
            )
            .await
            .map_err(|e| ApiError::from(DeployError::from(e)))?;
    s.deployer.set_capture_keys(&d.id, c.luks_keys.clone());
    s.db.audit(
        &actor.0,
        "capture.create",
        &format!(
            "{}: {mac} to image {:?}{}",
            d.id,
            c.name,
            match c.luks_keys.0.len() {
                0 => String::new(),
                n => format!(", with {n} LUKS key(s) held in memory"),
            }
        ),
    )
    .await?;
    s.deployer.tasks_created(vec![mac]);
    s.deployer.changed(&d.id);
    Ok((StatusCode::CREATED, Json(d)).into_response())
}

/// The agent's capture deployment; a restore task may not upload.
async fn capture_of(
    s: &Shared,
    t: &crate::serve::deployments::repo::Task,
) -> ApiResult<Deployment> {
    if !t.active() {
        return Err(task_over(t));
    }
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    if d.kind != "capture" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("task {} is a {}, not a capture", t.id, d.kind),
        ));
    }
    Ok(d)
}

/// How often a capture's hold on the store looks whether its deployment is over.
const HOLD_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Capture deployment `d` holds the store (shared) from its first request until it is over:
/// `gc`, on this server or another sharing the store, waits instead of freeing chunks it has
/// uploaded but not yet committed.
async fn hold_store(s: &Shared, d: &Deployment) -> ApiResult<()> {
    if s.deployer
        .capture_holds
        .lock()
        .expect("lock")
        .contains(&d.id)
    {
        return Ok(());
    }
    let store = store(s)?;
    let lock = tokio::task::spawn_blocking(move || store.lock_shared())
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    if !s
        .deployer
        .capture_holds
        .lock()
        .expect("lock")
        .insert(d.id.clone())
    {
        return Ok(());
    }
    let (deployer, id) = (s.deployer.clone(), d.id.clone());
    s.deployer.tasks.spawn(
        tracing::info_span!("capture store hold", deployment = %d.id),
        async move {
            loop {
                tokio::time::sleep(HOLD_CHECK).await;
                match deployer.db.deployments().deployment(&id).await {
                    Ok(d) if d.state.active() => continue,
                    Ok(_) | Err(DbError::NotFound(_)) => break,
                    Err(e) => tracing::warn!(error = %e, "checking a capture's deployment"),
                }
            }
            deployer.capture_holds.lock().expect("lock").remove(&id);
            drop(lock);
            Ok(())
        },
    );
    Ok(())
}

fn store(s: &Shared) -> ApiResult<Store> {
    Ok(s.images.store().clone())
}

/// The store again (the first was moved into a blocking task).
fn store_again(s: &Shared) -> ApiResult<Store> {
    store(s)
}

fn hash(h: &str) -> ApiResult<Hash> {
    Hash::from_hex(h).ok_or_else(|| ApiError::bad_request(format!("{h:?} is not a BLAKE3 hash")))
}

/// The stream a capture feeds, or a 409 for a capture that feeds none.
fn stream_of(s: &Shared, d: &Deployment) -> ApiResult<std::sync::Arc<Stream>> {
    s.deployer.stream_by_capture(&d.id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "capture {} feeds no deployment (a plain capture places no chunks)",
                d.id
            ),
        )
    })
}

/// Its stream's [`Live`], once the outline is in.
fn live_of(s: &Shared, d: &Deployment) -> ApiResult<std::sync::Arc<Live>> {
    stream_of(s, d)?.live().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "post the outline (POST /agent/capture/outline) before the chunks",
        )
    })
}

/// Places chunk `at` of the capture's stream.
fn place(live: &Live, at: u64, h: Hash) -> ApiResult<()> {
    live.place(at as usize, h)
        .map_err(|e| ApiError::bad_request(format!("placing a chunk: {e}")))
}

/// `POST /api/v1/agent/capture/outline` (the outline, a manifest whose chunks have no
/// hashes yet): a capture that feeds a deployment from its disk announces what it will read;
/// the deployment's stream starts.
#[utoipa::path(post, path = "/agent/capture/outline", tag = "agent",
    summary = "Agent (capture feeding a deployment from its disk): the outline (a manifest whose chunks' hashes are pending), before the chunks",
    request_body(content = Object, content_type = "application/json", description = "the outline"),
    responses((status = 200, description = "the stream starts", body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn outline(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let d = capture_of(&s, &t).await?;
    let st = stream_of(&s, &d)?;
    let m = Manifest::decode(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed outline: {e}")))?;
    if m.name != d.image_name {
        return Err(ApiError::bad_request(format!(
            "the outline is named {:?}, the capture {:?}",
            m.name, d.image_name
        )));
    }
    let chunks = m.chunks().count();
    let used = m.used_bytes() as i64;
    s.deployer
        .stream_outlined(&st, m)
        .await
        .map_err(ApiError::from)?;
    s.db.deployments().set_task_total(&t.id, used).await?;
    Ok(Json(serde_json::json!({ "chunks": chunks })))
}

/// `POST /api/v1/agent/capture/have`: which of these chunks the server lacks.
#[utoipa::path(post, path = "/agent/capture/have", tag = "agent", summary = "Agent (capture): which of these chunk hashes the server lacks",
    request_body = HaveRequest,
    responses((status = 200, description = "the hashes the server lacks", body = HaveReply), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn have(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    body: Result<Json<HaveRequest>, JsonRejection>,
) -> ApiResult<Json<HaveReply>> {
    let Json(h) = body?;
    let d = capture_of(&s, &t).await?;
    hold_store(&s, &d).await?;
    if h.hashes.len() > MAX_HAVE {
        return Err(ApiError::bad_request(format!(
            "{} hashes: at most {MAX_HAVE} at a time",
            h.hashes.len()
        )));
    }
    let hashes = h
        .hashes
        .iter()
        .map(|x| hash(x))
        .collect::<ApiResult<Vec<_>>>()?;
    let live = match h.at.is_empty() {
        true => None,
        false if h.at.len() == hashes.len() => Some(live_of(&s, &d)?),
        false => {
            return Err(ApiError::bad_request(format!(
                "{} places for {} hashes",
                h.at.len(),
                hashes.len()
            )))
        }
    };
    let store = store(&s)?;
    let asked = hashes.clone();
    // A streamed chunk the server has is read (and checked against its hash and its place's
    // length) before the stream may send it: the sender must never fail on a load.
    let lens: Vec<Option<usize>> = match &live {
        Some(l) => h.at.iter().map(|&at| l.plain_len(at as usize)).collect(),
        None => vec![None; hashes.len()],
    };
    let have = tokio::task::spawn_blocking(move || {
        asked
            .iter()
            .zip(lens)
            .map(|(h, len)| match len {
                Some(len) if store.has_chunk(h) => store.read_chunk(h, len).is_ok(),
                _ => store.has_chunk(h),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(anyhow::Error::from)?;
    if let Some(live) = &live {
        // What the server has is placed now; the others once uploaded.
        for ((h, &at), &has) in hashes.iter().zip(&h.at).zip(&have) {
            if has {
                place(live, at, *h)?;
            }
        }
    }
    let missing = hashes
        .iter()
        .zip(&have)
        .filter(|(_, &has)| !has)
        .map(|(h, _)| h.to_hex())
        .collect();
    Ok(Json(HaveReply { missing }))
}

#[derive(Deserialize)]
pub(crate) struct Len {
    len: usize,
    /// A streamed capture's: the chunk's place in the stream.
    at: Option<u64>,
}

/// `PUT /api/v1/agent/capture/chunks/{hash}?len=N`: one chunk as a zstd frame of `N` bytes of
/// plaintext. Kept only if it decompresses to exactly that and hashes to `hash`.
#[utoipa::path(put, path = "/agent/capture/chunks/{hash}", tag = "agent",
    summary = "Agent (capture): one chunk as a zstd frame; kept only if it decompresses to len bytes hashing to hash",
    params(("hash" = String, Path, description = "BLAKE3, hex"), ("len" = u64, Query, description = "plaintext bytes")),
    request_body(content = Vec<u8>, content_type = "application/zstd"),
    responses((status = 200, description = "already stored", body = ChunkStored), (status = 201, description = "stored", body = ChunkStored),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 410, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(crate) async fn put_chunk(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    UrlPath(h): UrlPath<String>,
    Query(q): Query<Len>,
    frame: Bytes,
) -> ApiResult<Response> {
    let d = capture_of(&s, &t).await?;
    hold_store(&s, &d).await?;
    let h = hash(&h)?;
    let live = match q.at {
        Some(at) => {
            let live = live_of(&s, &d)?;
            if live.plain_len(at as usize) != Some(q.len) {
                return Err(ApiError::bad_request(format!(
                    "chunk {at} of the stream holds {:?} bytes, not {}",
                    live.plain_len(at as usize),
                    q.len
                )));
            }
            Some((live, at))
        }
        None => None,
    };
    let store = store(&s)?;
    let r = tokio::task::spawn_blocking(move || {
        let short = |free: u64| free < frame.len() as u64 + RESERVE;
        if !store.has_chunk(&h) && store.free_space()?.is_some_and(short) {
            return Ok(None);
        }
        store.put_frame(&h, &frame, q.len).map(Some)
    })
    .await
    .map_err(anyhow::Error::from)?;
    if let (Ok(Some((_, new))), Some((live, at))) = (&r, &live) {
        // Stored and checked against its hash (one stored before is checked now): the
        // stream may send it.
        if !new {
            let (store, len) = (store_again(&s)?, q.len);
            let ok = tokio::task::spawn_blocking(move || store.read_chunk(&h, len).is_ok())
                .await
                .map_err(anyhow::Error::from)?;
            if !ok {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "the server's copy of chunk {h} does not read back as {len} bytes \
                         (drover image verify finds what else is damaged)"
                    ),
                ));
            }
        }
        place(live, *at, h)?;
    }
    match r {
        Ok(Some((stored, new))) => Ok((
            if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(ChunkStored { stored, new }),
        )
            .into_response()),
        Ok(None) => {
            tracing::error!(store = %s.images.store().location(), "capture upload refused: the store is full");
            Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "the server's image store ({}) is full: free space there (drover image gc, \
                     drover image rm) and capture again; nothing already stored was touched",
                    s.images.store().location()
                ),
            ))
        }
        Err(e @ imaging::store::StoreError::CorruptChunk { .. }) => {
            Err(ApiError::bad_request(format!("refused: {e}")))
        }
        Err(e) => Err(anyhow::anyhow!("storing chunk {h}: {e}").into()),
    }
}

/// `POST /api/v1/agent/capture/commit` (the manifest, as JSON): commits the image once every
/// chunk it names is stored, and ends the task.
#[utoipa::path(post, path = "/agent/capture/commit", tag = "agent",
    summary = "Agent (capture): the manifest, last; commits the image once every chunk it names is stored (a repeat answers with the same image)",
    request_body(content = Object, content_type = "application/json", description = "the image's manifest"),
    responses((status = 200, description = "the image", body = Committed), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(crate) async fn commit(
    State(s): State<Shared>,
    Extension(AgentTask(t)): Extension<AgentTask>,
    body: Bytes,
) -> ApiResult<Json<Committed>> {
    let d = capture_of(&s, &t).await?;
    let stream = s.deployer.stream_by_capture(&d.id);
    if let Some(m) = stream.as_ref().and_then(|st| st.live()?.finished()) {
        // Committed already (the answer was lost on the way).
        let st = stream.as_ref().expect("a stream");
        return Ok(Json(Committed {
            id: st.kept.lock().expect("lock").clone().unwrap_or_default(),
            name: m.name.clone(),
            version: m.name_version,
            used_bytes: m.used_bytes(),
            chunks: m.chunks().count() as u64,
            uploaded: m.stats.new_chunks,
        }));
    }
    if !d.image_id.is_empty() {
        // Committed already (the answer was lost on the way): the same image, not another.
        let img = s.deployer.image(&d.image_id).await?;
        let m = &img.manifest;
        return Ok(Json(Committed {
            id: d.image_id.clone(),
            name: m.name.clone(),
            version: m.name_version,
            used_bytes: m.used_bytes(),
            chunks: m.chunks().count() as u64,
            uploaded: m.stats.new_chunks,
        }));
    }
    let mut m = Manifest::decode(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed manifest: {e}")))?;
    if m.name != d.image_name {
        return Err(ApiError::bad_request(format!(
            "the manifest is named {:?}, the capture {:?}",
            m.name, d.image_name
        )));
    }
    if let Some(st) = &stream {
        // What the targets were sent must be what the source read.
        let live = live_of(&s, &d)?;
        if let Err(e) = live.finish(&m) {
            let why = format!("its manifest does not match what it streamed: {e}");
            s.deployer.stream_failed(st, &why).await;
            return Err(ApiError::new(StatusCode::CONFLICT, why));
        }
        s.deployer.changed(&st.restore);
        if !st.keep {
            // Nothing is kept (no --keep-as): its chunks are left to gc.
            let used = m.used_bytes() as i64;
            let chunks = m.chunks().count() as u64;
            sqlx::query("UPDATE deployments SET image_id = $1, image_name = $2 WHERE id = $3")
                .bind(format!("{IMAGE_PREFIX}{}", d.id))
                .bind(format!("{} (streamed, not kept)", d.image_name))
                .bind(&d.id)
                .execute(&s.db.pool)
                .await
                .map_err(anyhow::Error::from)?;
            s.db.deployments().set_task_total(&t.id, used).await?;
            s.db.audit(
                &format!("machine:{}", t.mac),
                "image.stream",
                &format!(
                    "{}: {chunks} chunk(s) of {} streamed, not kept",
                    d.id, t.mac
                ),
            )
            .await?;
            s.deployer.changed(&d.id);
            return Ok(Json(Committed {
                id: String::new(),
                name: m.name,
                version: 0,
                used_bytes: used as u64,
                chunks,
                uploaded: m.stats.new_chunks,
            }));
        }
    }
    let store = store(&s)?;
    let name = m.name.clone();
    let committed = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let _lock = store.lock_shared().map_err(|e| e.to_string())?;
        let mut missing = Vec::new();
        for a in &mut m.areas {
            for c in &mut a.chunks {
                // The stored size is the server's to say.
                match store.chunk_size(&c.hash).map_err(|e| e.to_string())? {
                    Some(len) => c.stored = len,
                    None => missing.push(c.hash),
                }
            }
        }
        if let Some(first) = missing.first() {
            return Ok(Err(format!(
                "{} chunk(s) of the manifest are not on the server (first {first}): upload \
                 them before committing",
                missing.len()
            )));
        }
        let (images, _) = store.scan().map_err(|e| e.to_string())?;
        m.name_version = images
            .iter()
            .filter(|i| i.manifest.name == m.name)
            .map(|i| i.manifest.name_version)
            .max()
            .unwrap_or(0)
            + 1;
        m.created = (now_ms() / 1000) as u64;
        let id = store.put_manifest(&m).map_err(|e| e.to_string())?;
        Ok(Ok((id, m)))
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(|e| ApiError::from(anyhow::anyhow!("committing image {name:?}: {e}")))?;
    let (id, m) = committed.map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    // The image is in: its passphrases are needed no more.
    s.deployer.forget_capture_keys(&d.id);
    if let Some(st) = &stream {
        *st.kept.lock().expect("lock") = Some(id.clone());
    }
    let full = format!("{}@{}", m.name, m.name_version);
    sqlx::query("UPDATE deployments SET image_id = $1, image_name = $2 WHERE id = $3")
        .bind(&id)
        .bind(&full)
        .bind(&d.id)
        .execute(&s.db.pool)
        .await
        .map_err(anyhow::Error::from)?;
    let used = m.used_bytes() as i64;
    let chunks = m.chunks().count() as i64;
    let new = m.stats.new_chunks as i64;
    s.db.deployments().set_task_total(&t.id, used).await?;
    s.db.audit(
        &format!("machine:{}", t.mac),
        "image.capture",
        &format!(
            "{full} ({id}) from {}: {} chunk(s), {new} uploaded",
            t.mac, chunks
        ),
    )
    .await?;
    s.deployer.changed(&d.id);
    Ok(Json(Committed {
        id,
        name: m.name,
        version: m.name_version,
        used_bytes: used as u64,
        chunks: chunks as u64,
        uploaded: new as u64,
    }))
}
