//! What iPXE loads over HTTP (public, as PXE is): `GET /boot/{mac}.ipxe`, the machine's boot
//! script, and `GET /boot/files/{path}`, the boot directory's kernel and initramfs.
//!
//! A machine with a pending task boots the drover kernel and initramfs with a command line
//! naming the server, a fresh task token (tokens handed out before keep working) and what to
//! do afterwards. The script is the machine's only when the request comes from the machine
//! itself ([`crate::serve::auth::caller`]); anyone else asking for it is told to boot its local disk, and
//! both are audited with the address. Any other machine — unknown, idle, or whose task is over —
//! boots its local disk (BIOS: `sanboot --no-describe --drive 0x80`; UEFI: `exit` to the next
//! boot entry), so a machine whose task is done never loops back into reimaging.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use crate::serve::inventory::mac::Mac;
use crate::serve::web::api::{parse_mac, ApiError, ApiResult, Shared};
use proto::api::ErrorBody;

/// What the boot scripts are made of and the boot files are read from.
pub(crate) struct BootEnv {
    /// The boot directory (the agent's kernel and initramfs).
    pub(crate) dir: PathBuf,
    /// The URL machines reach the server at.
    pub(crate) public_url: String,
    /// The agent kernel's arguments before drover's own.
    pub(crate) args: String,
    /// Unknown machines that PXE-boot run the agent once to register themselves.
    pub(crate) register_unknown: bool,
}

/// The boot environment's files in the boot directory (deploy/build-boot-env puts them there).
pub(crate) const KERNEL: &str = "vmlinuz";
pub(crate) const INITRD: &str = "initrd.img";

/// Boots the local disk: BIOS through its first hard disk, UEFI by leaving iPXE for the next
/// boot entry. iPXE leaves with a failure status: a boot option that returns success makes
/// UEFI firmware stop at its boot menu instead of trying the next one.
fn local_boot(why: &str) -> String {
    format!(
        "#!ipxe\n\
         echo drover: {why}: booting the local disk\n\
         iseq ${{platform}} efi && exit 1 ||\n\
         sanboot --no-describe --drive 0x80 || exit\n"
    )
}

fn script(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /boot/{mac}.ipxe`
#[utoipa::path(get, path = "/boot/{name}", tag = "boot", security(()),
    summary = "iPXE's boot script, `/boot/MAC.ipxe` (no login; a task's script only to the machine itself, as hello)",
    description = "The agent's kernel and initramfs for a machine with a pending task (a fresh task token on the command line), else the local disk.",
    params(("name" = String, Path, description = "MAC.ipxe", example = "aa:bb:cc:dd:ee:ff.ipxe")),
    responses((status = 200, description = "iPXE script", content_type = "text/plain"), (status = 400, body = ErrorBody)))]
pub(crate) async fn ipxe_script(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    let mac = name
        .strip_suffix(".ipxe")
        .ok_or_else(|| ApiError::bad_request(format!("{name:?}: ask for MAC.ipxe")))?;
    let mac = parse_mac(mac)?;
    Ok(script(match decide(&s, mac, peer.ip(), "iPXE").await? {
        Boot::Local(why) => local_boot(&why),
        Boot::Agent { what, args } => agent_script(&s, &what, &args),
    }))
}

/// What a machine that network-boots is to do, whichever loader asks.
pub(crate) enum Boot {
    /// Boot its local disk, saying why.
    Local(String),
    /// Boot the agent's kernel and initramfs: what for, and drover's kernel arguments.
    Agent { what: String, args: String },
}

/// Decides what the machine `mac` boots, asked from `peer` through `via` (the loader): the
/// agent with a fresh task token when it has a pending task (or registers, when unknown
/// machines do), its local disk otherwise. The task's script is handed only to the machine
/// itself ([`crate::serve::auth::caller`]); anyone else is told to boot its local disk, and
/// both are audited.
pub(crate) async fn decide(s: &Shared, mac: Mac, peer: IpAddr, via: &str) -> ApiResult<Boot> {
    // The script of a machine with a task carries its token: only the machine itself gets
    // it. Anyone else is told to boot the local disk, and the refusal is audited.
    let asked = format!("asked for {mac}'s boot script ({via})");
    let vouched =
        match crate::serve::auth::caller::vouch_or_audit(s, peer, mac, "boot.refused", &asked)
            .await?
        {
            Ok(why) => why,
            Err(why) => {
                return Ok(Boot::Local(format!(
                    "not handing out {mac}'s boot script: {why}"
                )));
            }
        };
    let Some(task) = s.db.deployments().active_task(mac).await? else {
        let known = s.db.inventory().machine(mac).await.is_ok();
        if !known && s.boot.register_unknown {
            if let Some(missing) = missing_boot_env(s).await {
                return Ok(Boot::Local(missing));
            }
            s.db.audit(&format!("machine:{mac}"), "boot.register", via)
                .await?;
            tracing::info!(%mac, via, "PXE: an unknown machine boots the agent to register");
            return Ok(Boot::Agent {
                what: format!("registering {mac}"),
                args: format!("drover.mac={mac} drover.mode=register drover.then=reboot"),
            });
        }
        let why = if known {
            "no task for this machine"
        } else {
            "unknown machine"
        };
        return Ok(Boot::Local(why.into()));
    };
    let d = s.db.deployments().deployment(&task.deployment_id).await?;
    if let Some(missing) = missing_boot_env(s).await {
        tracing::warn!(%mac, "no boot environment in {}: run deploy/build-boot-env", s.boot.dir.display());
        return Ok(Boot::Local(missing));
    }
    let to = peer.to_canonical().to_string();
    let token = s.db.deployments().issue_task_token(&task.id, &to).await?;
    s.db.audit(
        &format!("machine:{mac}"),
        "boot.agent",
        &format!(
            "task {} of deployment {} to {to} through {via} ({vouched})",
            task.id, d.id
        ),
    )
    .await?;
    tracing::info!(%mac, task = %task.id, deployment = %d.id, via, "PXE: booting the agent");
    Ok(Boot::Agent {
        what: format!(
            "{} {} (deployment {}, task {})",
            d.kind, d.image_name, d.id, task.id
        ),
        args: format!(
            "drover.token={token} drover.mac={mac} drover.then={}",
            d.then_action
        ),
    })
}

/// What is missing, when the boot environment is not there.
async fn missing_boot_env(s: &Shared) -> Option<String> {
    for f in [KERNEL, INITRD] {
        if !tokio::fs::try_exists(s.boot.dir.join(f))
            .await
            .unwrap_or(false)
        {
            return Some(format!(
                "no boot environment on the server ({f} missing; run deploy/build-boot-env)"
            ));
        }
    }
    None
}

/// Boots the agent's kernel and initramfs over HTTP with `args` after the admin's.
fn agent_script(s: &Shared, what: &str, args: &str) -> String {
    let base = &s.boot.public_url;
    // `initrd=NAME` lets an EFI-stub kernel find the initramfs iPXE loaded.
    format!(
        "#!ipxe\n\
         echo drover: {what}\n\
         kernel {base}/boot/files/{KERNEL} initrd={INITRD} {boot_args} drover.server={base} \
         {args} || goto failed\n\
         initrd {base}/boot/files/{INITRD} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo drover: the boot environment did not load; booting the local disk in 10 s\n\
         sleep 10\n\
         iseq ${{platform}} efi && exit 1 ||\n\
         sanboot --no-describe --drive 0x80 || exit\n",
        boot_args = s.boot.args,
    )
}

/// `GET /boot/files/{path}`: a file of the boot directory, streamed.
#[utoipa::path(get, path = "/boot/files/{*path}", tag = "boot", security(()),
    summary = "A file of the boot directory (public; nothing outside it)", params(("path" = String, Path)),
    responses((status = 200, description = "the file", content_type = "application/octet-stream"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn file(
    State(s): State<Shared>,
    UrlPath(path): UrlPath<String>,
) -> ApiResult<Response> {
    let p = pxe::tftp::resolve(&s.boot.dir, &path)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.0))?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("{path}: no such file"));
    let real = tokio::fs::canonicalize(&p).await.map_err(|_| not_found())?;
    let root = tokio::fs::canonicalize(&s.boot.dir)
        .await
        .map_err(|_| not_found())?;
    if !real.starts_with(&root) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{path}: leads out of the boot directory"),
        ));
    }
    let f = tokio::fs::File::open(&real)
        .await
        .map_err(|_| not_found())?;
    let meta = f.metadata().await.map_err(anyhow::Error::from)?;
    if !meta.is_file() {
        return Err(not_found());
    }
    // 256 KiB at a time: 40 machines loading a 60 MiB initramfs hold 10 MiB, not 2.4 GiB.
    let body = futures_util::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)),
                    Some(f),
                ))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, meta.len().to_string()),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
