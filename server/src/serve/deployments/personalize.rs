//! Personalization on the server's side: each machine's variables (its group's, its own, the
//! built-in ones), the templates of a deployment checked against every target machine when it
//! is created, and filled in for one machine when its task is handed out. The agent applies
//! the result to the restored system.

use std::net::IpAddr;

use proto::api::{Machine, Personalization, Personalize, PlacedFile};
use proto::template::{self, TemplateError, Vars};

use crate::serve::db::{Db, DbError};
use crate::serve::inventory::mac::Mac;

/// A machine's variables. `seen_at`: the address its agent spoke from, for `{ip}` when it has
/// no reservation.
pub(crate) async fn machine_vars(
    db: &Db,
    m: &Machine,
    seen_at: Option<IpAddr>,
) -> Result<Vars, DbError> {
    let group_vars = match &m.group {
        Some(g) => match db.inventory().group(g).await {
            Ok(g) => g.vars,
            Err(DbError::NotFound(_)) => Vars::new(),
            Err(e) => return Err(e),
        },
        None => Vars::new(),
    };
    let ip = m.ip.clone().or_else(|| seen_at.map(|a| a.to_string()));
    Ok(template::machine_vars(
        &m.name,
        &m.mac,
        ip.as_deref(),
        m.group.as_deref(),
        &group_vars,
        &m.vars,
    ))
}

/// One machine's personalization from the deployment's, or why it cannot be made.
pub(crate) fn fill(p: &Personalize, m: &Machine, vars: &Vars) -> Result<Personalization, String> {
    let render = |what: &str, t: &str| {
        template::render(t, vars).map_err(|e| match e {
            TemplateError::Unknown(v) => format!(
                "{what} names {{{v}}}, a variable machine {} ({}) does not have (set it: \
                 drover machine set {} --var {v}=..., or on its group)",
                m.name, m.mac, m.mac
            ),
            TemplateError::Malformed(why) => format!("{what}: {why}"),
        })
    };
    let what = format!("the hostname template {:?}", p.hostname_template());
    let text = render(&what, p.hostname_template())?;
    let hostname = template::hostname(&text).ok_or_else(|| {
        format!(
            "{what} gives {text:?} for machine {} ({}): nothing a hostname can hold",
            m.name, m.mac
        )
    })?;
    let files = p
        .files
        .iter()
        .map(|f| {
            Ok(PlacedFile {
                content: render(&format!("file {}", f.path), &f.content)?,
                ..f.clone()
            })
        })
        .collect::<Result<_, String>>()?;
    let first_boot = p
        .first_boot
        .as_deref()
        .map(|t| render("the first-boot script", t))
        .transpose()?;
    Ok(Personalization {
        hostname,
        vars: vars.clone(),
        files,
        first_boot,
        keep_network_first: p.keep_network_first.unwrap_or(false),
    })
}

/// At most this many placed files, and bytes of them and the first-boot script together.
const MAX_FILES: usize = 64;
const MAX_BYTES: usize = 1 << 20;

/// Checks a deployment's personalization against every target machine (before anything is
/// created): a template naming a variable one of them lacks is refused, naming both.
pub(crate) async fn check(db: &Db, p: &Personalize, macs: &[Mac]) -> Result<(), DbError> {
    if !p.enabled {
        return Ok(());
    }
    if let Some(t) = &p.hostname {
        template::names(t)
            .map_err(|e| DbError::Invalid(format!("the hostname template {t:?}: {e}")))?;
    }
    if p.files.len() > MAX_FILES {
        return Err(DbError::Invalid(format!(
            "{} files to place: at most {MAX_FILES}",
            p.files.len()
        )));
    }
    let bytes = p.files.iter().map(|f| f.content.len()).sum::<usize>()
        + p.first_boot.as_ref().map_or(0, String::len);
    if bytes > MAX_BYTES {
        return Err(DbError::Invalid(format!(
            "the files to place and the first-boot script hold {bytes} bytes: at most \
             {MAX_BYTES}"
        )));
    }
    for f in &p.files {
        f.check().map_err(DbError::Invalid)?;
    }
    for mac in macs {
        let m = db.inventory().machine(*mac).await?;
        // `{ip}` is known when the task is handed out at the latest (the agent's address).
        let vars = machine_vars(db, &m, Some(IpAddr::from([0, 0, 0, 0]))).await?;
        fill(p, &m, &vars).map_err(DbError::Invalid)?;
    }
    Ok(())
}

/// The personalization a restore task hands its agent: none when the deployment's is off.
pub(crate) async fn for_task(
    db: &Db,
    p: &Personalize,
    mac: &str,
    seen_at: Option<IpAddr>,
) -> Result<Option<Personalization>, DbError> {
    if !p.enabled {
        return Ok(None);
    }
    let mac: Mac = mac.parse().map_err(DbError::Invalid)?;
    let m = db.inventory().machine(mac).await?;
    let vars = machine_vars(db, &m, seen_at).await?;
    // Checked when the deployment was made; a variable removed since is said now.
    let mut out = fill(p, &m, &vars).map_err(DbError::Invalid)?;
    out.keep_network_first = match (p.keep_network_first, &m.group) {
        (Some(k), _) => k,
        (None, Some(g)) => match db.inventory().group(g).await {
            Ok(g) => g.keep_network_first,
            Err(DbError::NotFound(_)) => false,
            Err(e) => return Err(e),
        },
        (None, None) => false,
    };
    Ok(Some(out))
}
