//! The server's database: SQLite (a file in the data directory) by default, PostgreSQL when
//! `--database-url postgres://...` says so. One portable set of migrations (`migrations/`),
//! run at start; times are Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::RngCore;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// The database and the queries the server makes.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) sqlite: bool,
}

/// A machine and a group, as the API returns them (rows map into these).
pub(crate) use proto::api::{Group, Machine};

/// What went wrong, in words an API client can show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    /// A value a service's rules refuse (a bad name, address or disk), said as the user should
    /// read it.
    #[error("{0}")]
    Invalid(String),
    /// Something the server is not set up to do (wake-on-LAN without a lab interface).
    #[error("{0}")]
    Unavailable(String),
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

/// What an admin changes on a machine; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub(crate) struct MachineEdit {
    pub(crate) name: Option<String>,
    pub(crate) group: Option<Option<String>>,
    pub(crate) ip: Option<Option<std::net::Ipv4Addr>>,
    pub(crate) target_disk: Option<Option<String>>,
    /// Variables to set or remove.
    pub(crate) vars: Option<proto::api::VarsPatch>,
}

/// A wire enum stored as its text.
pub(crate) fn parsed<T: std::str::FromStr<Err = String>>(
    r: &sqlx::any::AnyRow,
    column: &str,
) -> Result<T, sqlx::Error> {
    let text: String = r.try_get(column)?;
    text.parse().map_err(|e: String| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: e.into(),
    })
}

/// A text column that may be NULL, parsed when it is not.
pub(crate) fn parsed_opt<T: std::str::FromStr<Err = String>>(
    r: &sqlx::any::AnyRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let text: Option<String> = r.try_get(column)?;
    text.map(|t| {
        t.parse().map_err(|e: String| sqlx::Error::ColumnDecode {
            index: column.into(),
            source: e.into(),
        })
    })
    .transpose()
}

/// A column holding JSON (variables, a deployment's personalization).
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    r: &sqlx::any::AnyRow,
    column: &str,
) -> Result<T, sqlx::Error> {
    let text: String = r.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("not the JSON it should hold: {e}").into(),
    })
}

/// A unique-constraint violation, in either database.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
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
    pub(crate) async fn begin_write(
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
        // Entries of one millisecond keep their order: the id starts with this process's
        // count of entries (fixed width, so it sorts), then a random part against other
        // servers on the same database.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(format!("{seq:016x}-{}", random_hex(6)))
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The audit log, newest first.
    pub(crate) async fn audit_log(
        &self,
        limit: i64,
    ) -> anyhow::Result<Vec<proto::api::AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, detail FROM audit_log ORDER BY at_ms DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(proto::api::AuditEntry {
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                })
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
}
