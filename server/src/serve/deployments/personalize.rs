//! Personalization on the server's side: each machine's variables (its group's, its own, the
//! built-in ones), the templates of a deployment checked against every target machine when it
//! is created, and filled in for one machine when its task is handed out. The agent applies
//! the result to the restored system.

use std::net::IpAddr;

use proto::api::{Machine, Personalization, Personalize};
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
    let what = |e: TemplateError| match e {
        TemplateError::Unknown(v) => format!(
            "the hostname template {:?} names {{{v}}}, a variable machine {} ({}) does not have \
             (set it: drover machine set {} --var {v}=..., or on its group)",
            p.hostname_template(),
            m.name,
            m.mac,
            m.mac
        ),
        TemplateError::Malformed(why) => {
            format!("the hostname template {:?}: {why}", p.hostname_template())
        }
    };
    let text = template::render(p.hostname_template(), vars).map_err(what)?;
    let hostname = template::hostname(&text).ok_or_else(|| {
        format!(
            "the hostname template {:?} gives {text:?} for machine {} ({}): nothing a hostname \
             can hold",
            p.hostname_template(),
            m.name,
            m.mac
        )
    })?;
    Ok(Personalization {
        hostname,
        vars: vars.clone(),
    })
}

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
    fill(p, &m, &vars).map(Some).map_err(DbError::Invalid)
}
