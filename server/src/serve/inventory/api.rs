//! The inventory's handlers: machines, groups and wake-ups. They parse the request and call
//! [`super::service::Inventory`] (and the [`Waker`](crate::serve::boot::wol::Waker)).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use proto::api::ErrorBody;
use serde::Deserialize;

use crate::serve::inventory::mac::Mac;
use crate::serve::web::api::{parse_mac, Actor, ApiResult, Shared};

#[derive(Deserialize)]
pub(crate) struct MachineQuery {
    group: Option<String>,
}

#[utoipa::path(get, path = "/machines", tag = "inventory", summary = "Machines (of one group with ?group=)",
    params(("group" = Option<String>, Query, description = "only this group's machines")),
    responses((status = 200, description = "machines", body = [proto::api::Machine]), (status = 401, body = ErrorBody)))]
pub(crate) async fn machines(
    State(s): State<Shared>,
    Query(q): Query<MachineQuery>,
) -> ApiResult<Json<Vec<proto::api::Machine>>> {
    Ok(Json(s.inventory.machines(q.group.as_deref()).await?))
}

#[utoipa::path(post, path = "/machines", tag = "inventory", summary = "Add a machine",
    request_body = proto::api::NewMachine,
    responses((status = 201, description = "added", body = proto::api::Machine), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn add_machine(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<proto::api::NewMachine>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(m) = body?;
    let added = s.inventory.add_machine(&actor.0, &m).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

#[utoipa::path(get, path = "/machines/{mac}", tag = "inventory", summary = "One machine",
    params(("mac" = String, Path, example = "aa:bb:cc:dd:ee:ff")),
    responses((status = 200, description = "the machine", body = proto::api::Machine), (status = 404, body = ErrorBody)))]
pub(crate) async fn machine(
    State(s): State<Shared>,
    UrlPath(mac): UrlPath<String>,
) -> ApiResult<Json<proto::api::Machine>> {
    Ok(Json(s.inventory.machine(parse_mac(&mac)?).await?))
}

#[utoipa::path(patch, path = "/machines/{mac}", tag = "inventory",
    summary = "Rename, regroup, reserve an address, pin the disk (null clears group, ip, disk)",
    params(("mac" = String, Path, example = "aa:bb:cc:dd:ee:ff")), request_body = proto::api::MachinePatch,
    responses((status = 200, description = "changed", body = proto::api::Machine), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn update_machine(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(mac): UrlPath<String>,
    body: Result<Json<proto::api::MachinePatch>, JsonRejection>,
) -> ApiResult<Json<proto::api::Machine>> {
    let mac = parse_mac(&mac)?;
    let Json(patch) = body?;
    Ok(Json(
        s.inventory.update_machine(&actor.0, mac, &patch).await?,
    ))
}

#[utoipa::path(delete, path = "/machines/{mac}", tag = "inventory", summary = "Remove a machine",
    params(("mac" = String, Path, example = "aa:bb:cc:dd:ee:ff")),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_machine(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(mac): UrlPath<String>,
) -> ApiResult<StatusCode> {
    s.inventory
        .remove_machine(&actor.0, parse_mac(&mac)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/groups", tag = "inventory", summary = "Groups with their machine counts",
    responses((status = 200, description = "groups", body = [proto::api::Group])))]
pub(crate) async fn groups(State(s): State<Shared>) -> ApiResult<Json<Vec<proto::api::Group>>> {
    Ok(Json(s.inventory.groups().await?))
}

#[utoipa::path(post, path = "/groups", tag = "inventory", summary = "Add a group",
    request_body = proto::api::NewGroup,
    responses((status = 201, description = "added", body = proto::api::Group), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn add_group(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<proto::api::NewGroup>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(g) = body?;
    let added = s.inventory.add_group(&actor.0, &g).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

#[utoipa::path(delete, path = "/groups/{name}", tag = "inventory",
    summary = "Remove a group (its machines stay, without a group)", params(("name" = String, Path)),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_group(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    s.inventory.remove_group(&actor.0, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/groups/{name}", tag = "inventory",
    summary = "Set (a value) or remove (null) a group's personalization variables",
    params(("name" = String, Path)), request_body = proto::api::GroupPatch,
    responses((status = 200, description = "changed", body = proto::api::Group), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn update_group(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<proto::api::GroupPatch>, JsonRejection>,
) -> ApiResult<Json<proto::api::Group>> {
    let Json(patch) = body?;
    Ok(Json(
        s.inventory.patch_group(&actor.0, &name, &patch).await?,
    ))
}

/// Sends wake-on-LAN magic packets to the lab interface's subnet broadcast.
#[utoipa::path(post, path = "/wake", tag = "inventory",
    summary = "Send wake-on-LAN magic packets (to machines by MAC and/or a group's machines)",
    request_body = proto::api::Wake,
    responses((status = 200, description = "sent", body = proto::api::Woken), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn wake(
    State(s): State<Shared>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<proto::api::Wake>, JsonRejection>,
) -> ApiResult<Json<proto::api::Woken>> {
    let Json(w) = body?;
    let macs = s.inventory.wake_targets(&w).await?;
    let to = s.waker.wake(&actor.0, &macs).await?;
    Ok(Json(proto::api::Woken {
        woken: macs.iter().map(Mac::to_string).collect(),
        to: to.to_string(),
    }))
}
