//! The image store's handlers: list the image versions, verify one.

use axum::extract::{Path as UrlPath, State};
use axum::{Extension, Json};
use proto::api::ErrorBody;

use crate::serve::web::api::{Actor, ApiResult, Shared};

#[utoipa::path(get, path = "/images", tag = "images", summary = "Image versions in the store",
    responses((status = 200, description = "images", body = [proto::api::Image]), (status = 401, body = ErrorBody)))]
pub(crate) async fn images(State(s): State<Shared>) -> ApiResult<Json<Vec<proto::api::Image>>> {
    Ok(Json(s.images.list().await?))
}

/// `GET /store`: the image store and what this server has read from it.
#[utoipa::path(get, path = "/store", tag = "images",
    summary = "The image store: where, whether encrypted, and reads from it and its local cache",
    responses((status = 200, description = "the store", body = proto::api::StoreInfo),
        (status = 401, body = ErrorBody)))]
pub(crate) async fn store_info(State(s): State<Shared>) -> ApiResult<Json<proto::api::StoreInfo>> {
    let store = s.images.store();
    Ok(Json(proto::api::StoreInfo {
        location: store.location(),
        encrypted: store.encrypted(),
        cache: store.read_stats().map(|r| proto::api::StoreCache {
            store_reads: r.store_reads,
            store_bytes: r.store_bytes,
            cache_hits: r.cache_hits,
            cache_bytes: r.cache_bytes,
            cache_max_bytes: r.cache_max_bytes,
            cache_files: r.cache_files,
            damaged_in_cache: r.damaged_in_cache,
        }),
    }))
}

/// `POST /images/{reference}/verify`: every chunk of the image re-read, decompressed and
/// re-hashed from the store; the bad ones listed.
#[utoipa::path(post, path = "/images/{reference}/verify", tag = "images",
    summary = "Re-read, decompress and re-hash every chunk of the image in the store; list the bad ones",
    params(("reference" = String, Path, description = "an image id (or its start), name or name@version")),
    responses((status = 200, description = "what was found", body = proto::api::ImageVerified),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn verify_image(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(reference): UrlPath<String>,
) -> ApiResult<Json<proto::api::ImageVerified>> {
    let v = s.images.verify(reference).await?;
    let label = format!("{}@{}", v.name, v.version);
    let outcome = match v.bad.len() {
        0 => format!("{label}: all {} chunks right", v.chunks),
        n => format!("{label}: {n} of {} chunks bad", v.chunks),
    };
    s.db.audit(&actor.0, "image.verify", &outcome).await?;
    Ok(Json(v))
}
