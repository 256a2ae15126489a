//! The server's database: SQLite (a file in the data directory) by default, PostgreSQL when
//! `--database-url postgres://...` says so. One portable set of migrations (`migrations/`),
//! run at start; times are Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::RngCore;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::serve::mac::Mac;

/// The database and the queries the server makes.
#[derive(Clone)]
pub(crate) struct Db {
    pub(super) pool: AnyPool,
    sqlite: bool,
}

/// A machine in the inventory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Machine {
    pub(crate) mac: String,
    pub(crate) name: String,
    pub(crate) group: Option<String>,
    pub(crate) disk_serial: Option<String>,
    pub(crate) disk_size: Option<i64>,
    /// Full DHCP's fixed address for it (a reservation).
    pub(crate) ip: Option<String>,
    /// The disk its agent writes when it has several: `serial:...` or `size:BYTES`.
    pub(crate) target_disk: Option<String>,
    pub(crate) state: String,
    /// `admin` (added by an admin) or `hello` (said hello unknown).
    pub(crate) registered: String,
    pub(crate) last_seen_ms: Option<i64>,
    pub(crate) created_ms: i64,
}

/// A group of machines.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) machines: i64,
    pub(crate) created_ms: i64,
}

/// What went wrong, in words an API client can show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        Self::Other(e.into())
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn machine(r: &AnyRow) -> Result<Machine, sqlx::Error> {
    Ok(Machine {
        mac: r.try_get("mac")?,
        name: r.try_get("name")?,
        group: r.try_get("group_name")?,
        disk_serial: r.try_get("disk_serial")?,
        disk_size: r.try_get("disk_size")?,
        ip: r.try_get("ip")?,
        target_disk: r.try_get("target_disk")?,
        state: r.try_get("state")?,
        registered: r.try_get("registered")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        created_ms: r.try_get("created_ms")?,
    })
}

const MACHINE_COLUMNS: &str = "mac, name, group_name, disk_serial, disk_size, ip, target_disk, \
                               state, registered, last_seen_ms, created_ms";

/// What an admin changes on a machine; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub(crate) struct MachineEdit {
    pub(crate) name: Option<String>,
    pub(crate) group: Option<Option<String>>,
    pub(crate) ip: Option<Option<std::net::Ipv4Addr>>,
    pub(crate) target_disk: Option<Option<String>>,
}

/// A unique-constraint violation, in either database.
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation() || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

impl Db {
    /// Connects (creating a SQLite file if needed) and runs the migrations.
    pub(crate) async fn open(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
            bail!("database URL {url:?}: only sqlite:// and postgres:// are supported");
        }
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time, but reads go on beside it: enough
            // connections that a page of the API is not queued behind agents' reports.
            .max_connections(if sqlite { 8 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // A writer waits for the lock (40 agents report at once) rather than
                        // failing; in WAL mode, NORMAL syncs at checkpoints rather than at every
                        // commit: a crash of the server loses nothing, a power cut at most the
                        // last progress reports.
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .with_context(|| format!("opening the database {}", redact(url)))?;
        if sqlite {
            // Concurrent readers while one writes; wait for the lock rather than fail.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("migrating the database")?;
        Ok(Self { pool, sqlite })
    }

    /// A transaction that writes. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred one that reads first cannot wait for the lock when another
    /// writer went ahead meanwhile, and fails with "database is locked".
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
    }

    /// Appends to the audit log.
    pub(crate) async fn audit(
        &self,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(random_hex(12))
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The audit log, newest first.
    pub(crate) async fn audit_log(&self, limit: i64) -> anyhow::Result<Vec<serde_json::Value>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, detail FROM audit_log ORDER BY at_ms DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "at_ms": r.try_get::<i64, _>("at_ms")?,
                    "actor": r.try_get::<String, _>("actor")?,
                    "action": r.try_get::<String, _>("action")?,
                    "detail": r.try_get::<String, _>("detail")?,
                }))
            })
            .collect()
    }

    /// Creates an API token named `name`; returns the token (shown once, stored hashed).
    pub(crate) async fn create_token(&self, name: &str) -> Result<String, DbError> {
        let id = random_hex(8);
        let secret = random_hex(24);
        let r = sqlx::query(
            "INSERT INTO api_tokens (id, name, secret, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(blake3::hash(secret.as_bytes()).to_hex().to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(format!("drv_{id}_{secret}")),
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!("token {name:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The name of the token `token`, if it is valid.
    pub(crate) async fn check_token(&self, token: &str) -> anyhow::Result<Option<String>> {
        let Some((id, secret)) = token.strip_prefix("drv_").and_then(|t| t.split_once('_')) else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT name, secret FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret")?;
        let Ok(stored) = blake3::Hash::from_hex(&stored) else {
            return Ok(None);
        };
        // blake3::Hash compares in constant time.
        Ok((blake3::hash(secret.as_bytes()) == stored).then(|| row.get("name")))
    }

    /// Adds a machine by an admin, or returns `Exists` (the MAC, or the reserved address).
    pub(crate) async fn add_machine(
        &self,
        mac: Mac,
        edit: &MachineEdit,
    ) -> Result<Machine, DbError> {
        let group = edit.group.clone().flatten();
        if let Some(g) = &group {
            self.ensure_group(g).await?;
        }
        let m = Machine {
            mac: mac.to_string(),
            name: edit.name.clone().unwrap_or_else(|| mac.default_name()),
            group,
            disk_serial: None,
            disk_size: None,
            ip: edit.ip.flatten().map(|a| a.to_string()),
            target_disk: edit.target_disk.clone().flatten(),
            state: "registered".into(),
            registered: "admin".into(),
            last_seen_ms: None,
            created_ms: now_ms(),
        };
        if let Some(ip) = &m.ip {
            self.check_ip_free(ip, &m.mac).await?;
        }
        let r = sqlx::query(&format!(
            "INSERT INTO machines ({MACHINE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&m.mac)
        .bind(&m.name)
        .bind(&m.group)
        .bind(&m.disk_serial)
        .bind(m.disk_size)
        .bind(&m.ip)
        .bind(&m.target_disk)
        .bind(&m.state)
        .bind(&m.registered)
        .bind(m.last_seen_ms)
        .bind(m.created_ms)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(m),
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!("machine {mac}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// `Exists` naming the holder when another machine has `ip` reserved.
    async fn check_ip_free(&self, ip: &str, mac: &str) -> Result<(), DbError> {
        let holder = sqlx::query("SELECT mac FROM machines WHERE ip = $1 AND mac <> $2")
            .bind(ip)
            .bind(mac)
            .fetch_optional(&self.pool)
            .await?;
        match holder {
            Some(r) => Err(DbError::Exists(format!(
                "a reservation of {ip} (for {})",
                r.try_get::<String, _>("mac")?
            ))),
            None => Ok(()),
        }
    }

    /// Every reservation: (MAC, address).
    pub(crate) async fn reservations(&self) -> anyhow::Result<Vec<(Mac, std::net::Ipv4Addr)>> {
        let rows = sqlx::query("SELECT mac, ip FROM machines WHERE ip IS NOT NULL ORDER BY mac")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mac: String = r.try_get("mac")?;
            let ip: String = r.try_get("ip")?;
            if let (Ok(mac), Ok(ip)) = (mac.parse(), ip.parse()) {
                out.push((mac, ip));
            }
        }
        Ok(out)
    }

    /// Every machine, by group then name; only those of `group` if given.
    pub(crate) async fn machines(&self, group: Option<&str>) -> anyhow::Result<Vec<Machine>> {
        let rows = match group {
            Some(g) => {
                sqlx::query(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE group_name = $1 ORDER BY name, mac"
            ))
                .bind(g)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines ORDER BY group_name, name, mac"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.iter().map(machine).collect::<Result<_, _>>()?)
    }

    /// One machine.
    pub(crate) async fn machine(&self, mac: Mac) -> Result<Machine, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE mac = $1"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(machine(&r)?),
            None => Err(DbError::NotFound(format!("machine {mac}"))),
        }
    }

    /// Changes a machine's name and/or group (`Some(None)` takes it out of its group).
    pub(crate) async fn update_machine(
        &self,
        mac: Mac,
        edit: &MachineEdit,
    ) -> Result<Machine, DbError> {
        let mut m = self.machine(mac).await?;
        if let Some(Some(g)) = &edit.group {
            self.ensure_group(g).await?;
        }
        if let Some(n) = &edit.name {
            m.name = n.clone();
        }
        if let Some(g) = &edit.group {
            m.group = g.clone();
        }
        if let Some(ip) = edit.ip {
            m.ip = ip.map(|a| a.to_string());
        }
        if let Some(d) = &edit.target_disk {
            m.target_disk = d.clone();
        }
        if let Some(ip) = &m.ip {
            self.check_ip_free(ip, &m.mac).await?;
        }
        let r = sqlx::query(
            "UPDATE machines SET name = $1, group_name = $2, ip = $3, target_disk = $4 \
             WHERE mac = $5",
        )
        .bind(&m.name)
        .bind(&m.group)
        .bind(&m.ip)
        .bind(&m.target_disk)
        .bind(&m.mac)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(m),
            // Two admins reserving one address at once: the index decides.
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!(
                "a reservation of {}",
                m.ip.as_deref().unwrap_or("?")
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a machine.
    pub(crate) async fn remove_machine(&self, mac: Mac) -> Result<(), DbError> {
        let r = sqlx::query("DELETE FROM machines WHERE mac = $1")
            .bind(mac.to_string())
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("machine {mac}")));
        }
        Ok(())
    }

    async fn ensure_group(&self, name: &str) -> Result<(), DbError> {
        let exists = sqlx::query("SELECT name FROM groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !exists {
            match self.add_group(name).await {
                Ok(_) | Err(DbError::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds a group.
    pub(crate) async fn add_group(&self, name: &str) -> Result<Group, DbError> {
        let created_ms = now_ms();
        let r = sqlx::query("INSERT INTO groups (name, created_ms) VALUES ($1, $2)")
            .bind(name)
            .bind(created_ms)
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(Group {
                name: name.to_string(),
                machines: 0,
                created_ms,
            }),
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!("group {name:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every group with its number of machines.
    pub(crate) async fn groups(&self) -> anyhow::Result<Vec<Group>> {
        let rows = sqlx::query(
            "SELECT g.name AS name, g.created_ms AS created_ms, \
                    (SELECT COUNT(*) FROM machines m WHERE m.group_name = g.name) AS machines \
             FROM groups g ORDER BY g.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Group {
                    name: r.try_get("name")?,
                    machines: r.try_get("machines")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Removes a group; its machines stay, without a group.
    pub(crate) async fn remove_group(&self, name: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE machines SET group_name = NULL WHERE group_name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        let r = sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("group {name:?}")));
        }
        Ok(())
    }

    /// Machines per state, for `/metrics`.
    pub(crate) async fn machine_states(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM machines GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// Whether the database answers.
    pub(crate) async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// A database URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://drover:secret@db:5432/drover"),
            "postgres://drover:***@db:5432/drover"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn inventory_round_trip_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::open(&url).await.unwrap();
        let mac: Mac = "AA-BB-CC-00-11-22".parse().unwrap();
        let m = db
            .add_machine(
                mac,
                &MachineEdit {
                    group: Some(Some("lab-1".into())),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(m.mac, "aa:bb:cc:00:11:22");
        assert_eq!(m.group.as_deref(), Some("lab-1"));
        assert!(matches!(
            db.add_machine(mac, &MachineEdit::default()).await,
            Err(DbError::Exists(_))
        ));
        assert_eq!(db.machines(Some("lab-1")).await.unwrap(), vec![m.clone()]);
        let g = db.groups().await.unwrap();
        assert_eq!((g[0].name.as_str(), g[0].machines), ("lab-1", 1));
        let m2 = db
            .update_machine(
                mac,
                &MachineEdit {
                    name: Some("pc-7".into()),
                    group: Some(None),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((m2.name.as_str(), m2.group), ("pc-7", None));
        db.remove_group("lab-1").await.unwrap();
        db.remove_machine(mac).await.unwrap();
        assert!(matches!(
            db.remove_machine(mac).await,
            Err(DbError::NotFound(_))
        ));

        let t = db.create_token("ci").await.unwrap();
        assert_eq!(db.check_token(&t).await.unwrap().as_deref(), Some("ci"));
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('0') { '1' } else { '0' });
        assert_eq!(db.check_token(&forged).await.unwrap(), None);
        assert_eq!(db.check_token("nonsense").await.unwrap(), None);
        assert!(matches!(
            db.create_token("ci").await,
            Err(DbError::Exists(_))
        ));

        db.audit("ci", "machine.add", "x").await.unwrap();
        assert_eq!(db.audit_log(10).await.unwrap().len(), 1);
        // Reopening runs no migration twice and keeps the data.
        drop(db);
        let db = Db::open(&url).await.unwrap();
        assert_eq!(db.check_token(&t).await.unwrap().as_deref(), Some("ci"));
    }
}
