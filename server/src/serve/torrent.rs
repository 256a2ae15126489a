//! Image torrents: `GET /api/v1/images/{ref}/torrent` answers a `.torrent` whose payload is the
//! image's used extents at their disk offsets ([`imaging::torrent`]), announcing to this
//! server's tracker (`{public_url}/announce`). The info dictionary (its piece hashes need every
//! chunk read once) is computed on first use and kept in `DATA/torrents/{image id}.info`, so
//! neither a second request nor a server restart hashes the image again.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::{ApiError, ApiResult, Shared};

/// One image hashed at a time (a second request for it waits, then reads the cache).
static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the info dictionaries are kept.
pub(crate) fn cache_dir(store_dir: &Path) -> PathBuf {
    store_dir
        .parent()
        .map_or_else(|| store_dir.join("torrents"), |d| d.join("torrents"))
}

/// The bencoded info dictionary of image `reference`, and the image's id and name.
pub(crate) async fn info(
    store_dir: &Path,
    reference: &str,
) -> ApiResult<(Vec<u8>, String, String)> {
    let _guard = BUILDING.lock().await;
    let (store_dir, reference) = (store_dir.to_path_buf(), reference.to_string());
    tokio::task::spawn_blocking(move || {
        let store = imaging::store::Store::open(&store_dir).map_err(anyhow::Error::from)?;
        let img = store.resolve(&reference).map_err(|e| match e {
            imaging::store::StoreError::NotFound(_) | imaging::store::StoreError::Ambiguous(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            e => anyhow::Error::from(e).into(),
        })?;
        let label = format!("{}@{}", img.manifest.name, img.manifest.name_version);
        let dir = cache_dir(&store_dir);
        let path = dir.join(format!("{}.info", img.id));
        if let Ok(b) = std::fs::read(&path) {
            return Ok((b, img.id, label));
        }
        let m = &img.manifest;
        let payload = imaging::torrent::Payload::of(m);
        let mut reader = imaging::torrent::ImageReader::new(&store, m);
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
pub(crate) async fn torrent(
    State(s): State<Shared>,
    UrlPath(reference): UrlPath<String>,
) -> ApiResult<Response> {
    let (info, _id, label) = info(&s.store_dir, &reference).await?;
    s.tracker.know(imaging::torrent::info_hash(&info));
    let announce = format!("{}/announce", s.public_url.trim_end_matches('/'));
    let body = imaging::torrent::metainfo(&announce, &info);
    Ok((
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
        .into_response())
}
