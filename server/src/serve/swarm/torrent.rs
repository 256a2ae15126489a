//! Image torrents: `GET /api/v1/images/{ref}/torrent` answers a `.torrent` whose payload is the
//! image's used extents at their disk offsets ([`imaging::torrent`]), announcing to this
//! server's tracker (`{public_url}/announce`). The info dictionary (its piece hashes need every
//! chunk read once) is computed on first use and kept in `DATA/torrents/{image id}.info`, so
//! neither a second request nor a server restart hashes the image again. Fetching a torrent
//! makes the server seed it ([`crate::serve::swarm::seeder`]).

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::serve::web::api::{ApiError, ApiResult, Shared};
use proto::api::{self, ErrorBody};

/// How long an agent's request for its torrent waits for it to be built before it is told to
/// come back.
const BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// One image hashed at a time (a second request for it waits, then reads the cache).
static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the info dictionaries are kept: in the data directory, whatever the store.
pub(crate) fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("torrents")
}

/// The bencoded info dictionary of image `reference`, and the image's id and name.
pub(crate) async fn info(
    store: &imaging::store::Store,
    data_dir: &Path,
    reference: &str,
) -> ApiResult<(Vec<u8>, String, String)> {
    let _guard = BUILDING.lock().await;
    let (store, data_dir, reference) =
        (store.clone(), data_dir.to_path_buf(), reference.to_string());
    tokio::task::spawn_blocking(move || {
        let img = store.resolve(&reference).map_err(|e| match e {
            imaging::store::StoreError::NotFound(_) | imaging::store::StoreError::Ambiguous(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            e => anyhow::Error::from(e).into(),
        })?;
        let label = format!("{}@{}", img.manifest.name, img.manifest.name_version);
        let dir = cache_dir(&data_dir);
        let path = dir.join(format!("{}.info", img.id));
        if let Ok(b) = std::fs::read(&path) {
            return Ok((b, img.id, label));
        }
        let m = &img.manifest;
        let payload = imaging::torrent::Payload::of(m);
        let cache = imaging::torrent::ChunkCache::new(1);
        let reader = imaging::torrent::ImageReader::new(&store, m, &cache);
        let hashes = payload
            .piece_hashes(|off, buf| reader.read_at(off, buf).map_err(std::io::Error::other))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("image {label} cannot be read from the store: {e}"),
                )
            })?;
        let info = payload.info(&format!("drover-{}", img.id), &hashes);
        std::fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
        let tmp = dir.join(format!(".{}.info.tmp", img.id));
        std::fs::write(&tmp, &info)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| anyhow::anyhow!("keeping the torrent of {label} in {}: {e}", dir.display()))?;
        tracing::info!(image = %label, pieces = payload.pieces(), bytes = payload.total, "image torrent built");
        Ok((info, img.id, label))
    })
    .await
    .map_err(anyhow::Error::from)?
}

/// `GET /api/v1/images/{ref}/torrent`
#[utoipa::path(get, path = "/images/{reference}/torrent", tag = "images",
    summary = "The image's .torrent (payload: its used extents, one file per extent named by its disk offset; announces to this server)",
    params(("reference" = String, Path, description = "an image id (or its start), name or name@version")),
    responses((status = 200, description = "the torrent", content_type = "application/x-bittorrent"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn torrent(
    State(s): State<Shared>,
    UrlPath(reference): UrlPath<String>,
) -> ApiResult<Response> {
    let (body, label) = s.deployer.seeder.prepare(&reference).await?;
    Ok(torrent_response(body, &label))
}

fn torrent_response(body: Vec<u8>, label: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-bittorrent".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}.torrent\"",
                    label.replace(['"', '/', '\\'], "_")
                ),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/v1/agent/torrent`: the task's image torrent, seeded by the server. While it is
/// being built (every piece hashed) the answer is 503: the agent asks again. It takes the
/// task's token after the task is over too: a machine that finished joins the swarm as a seed.
#[utoipa::path(get, path = "/api/v1/agent/torrent", tag = "agent", security(()),
    summary = "Agent: its task's image torrent, seeded by the server (503 while it is being built: ask again)",
    description = "Takes the task token (Authorization: Bearer), also after the task is over: a finished machine seeds.",
    responses((status = 200, description = "the torrent", content_type = "application/x-bittorrent"), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn agent_torrent(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let t = task_of_token(&s, &headers).await?;
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    let (seeder, id) = (s.deployer.seeder.clone(), d.image_id.clone());
    // The build goes on when this request gives up waiting.
    let job = tokio::spawn(async move { seeder.prepare(&id).await });
    match tokio::time::timeout(BUILD_WAIT, job).await {
        Ok(r) => {
            let (body, label) = r.map_err(anyhow::Error::from)??;
            Ok(torrent_response(body, &label))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the torrent of image {} is being built: ask again shortly",
                d.image_name
            ),
        )),
    }
}

/// `GET /api/v1/agent/seed`: whether an agent that has the whole image seeds on — while its
/// deployment runs and one of its machines still lacks the image (waiting or receiving). A
/// seeding machine personalizes its disk only afterwards, so it never serves changed pieces,
/// and the machines that are personalizing or done do not hold the seeds. It takes the
/// task's token after the task is over, which the other agent endpoints refuse.
#[utoipa::path(get, path = "/api/v1/agent/seed", tag = "agent", security(()),
    summary = "Agent, once written: whether to keep seeding (while a machine of its deployment still lacks the image)",
    description = "Takes the task token (Authorization: Bearer), also after the task is over.",
    responses((status = 200, description = "whether to seed", body = api::SeedReply), (status = 401, body = ErrorBody)))]
pub(crate) async fn seed(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> ApiResult<Json<api::SeedReply>> {
    let t = task_of_token(&s, &headers).await?;
    let d = s.db.deployments().deployment(&t.deployment_id).await?;
    let state = d.state;
    let running = matches!(
        state,
        api::DeploymentState::Waiting | api::DeploymentState::Running
    );
    let needed = running
        && s.db
            .deployments()
            .tasks_of(&d.id)
            .await?
            .iter()
            .any(|t| t.state.lacks_image());
    Ok(Json(api::SeedReply {
        seed: needed,
        deployment: d.id,
        state,
    }))
}

/// The task of the request's task token, over or not.
async fn task_of_token(
    s: &Shared,
    headers: &HeaderMap,
) -> ApiResult<crate::serve::deployments::repo::Task> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| t.starts_with("drt_"))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a task token is needed (Authorization: Bearer drt_...)",
            )
        })?;
    s.db.deployments()
        .check_task_token(token)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown task token"))
}
