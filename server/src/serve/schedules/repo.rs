//! Schedules and their runs in the database. A run row is the once-only claim of one due
//! time: its primary key lets exactly one server insert it, and the newest row tells every
//! server which occurrence was handled last.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::serve::db::{is_unique_violation, json_column, now_ms, parsed, random_hex, Db, DbError};
use crate::serve::schedules::service::Schedule;

/// What a new schedule is (already checked).
pub(crate) struct NewSchedule<'a> {
    pub(crate) name: &'a str,
    pub(crate) cron: Option<&'a str>,
    pub(crate) at_ms: Option<i64>,
    pub(crate) action: &'a str,
    pub(crate) image: Option<&'a str>,
    pub(crate) targets: &'a str,
    pub(crate) transport: &'a str,
    pub(crate) fallback: &'a str,
    pub(crate) min_machines: Option<i64>,
    pub(crate) max_wait_ms: Option<i64>,
    pub(crate) then_action: &'a str,
    pub(crate) wake_lead_ms: Option<i64>,
    pub(crate) created_by: &'a str,
    pub(crate) personalize: &'a proto::api::Personalize,
    pub(crate) layout: Option<&'a str>,
}

/// One run (or wake-up) of a schedule.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) due_ms: i64,
    pub(crate) server: String,
    pub(crate) outcome: String,
    pub(crate) detail: Option<String>,
    pub(crate) deployment_id: Option<String>,
    pub(crate) at_ms: i64,
}

const SCHEDULE_COLUMNS: &str = "id, name, cron, at_ms, action, image, targets, transport, \
    fallback, min_machines, max_wait_ms, then_action, wake_lead_ms, created_by, created_ms, \
    personalize, layout, (SELECT MAX(due_ms) FROM schedule_runs r WHERE r.schedule_id = s.id) \
    AS last_due_ms";

fn schedule(r: &AnyRow) -> Result<Schedule, sqlx::Error> {
    Ok(Schedule {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        cron: r.try_get("cron")?,
        at_ms: r.try_get("at_ms")?,
        action: parsed(r, "action")?,
        image: r.try_get("image")?,
        targets: r.try_get("targets")?,
        transport: parsed(r, "transport")?,
        fallback: parsed(r, "fallback")?,
        min_machines: r.try_get("min_machines")?,
        max_wait_ms: r.try_get("max_wait_ms")?,
        then_action: parsed(r, "then_action")?,
        wake_lead_ms: r.try_get("wake_lead_ms")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
        last_due_ms: r.try_get("last_due_ms")?,
        personalize: json_column(r, "personalize")?,
        layout: crate::serve::db::parsed_opt(r, "layout")?,
    })
}

/// The schedules' and their runs' queries, through the server's database handle.
pub(crate) struct Schedules<'a> {
    db: &'a Db,
}

impl Db {
    /// The schedules' and their runs' queries.
    pub(crate) fn schedules(&self) -> Schedules<'_> {
        Schedules { db: self }
    }
}

impl Schedules<'_> {
    pub(crate) async fn create_schedule(&self, s: &NewSchedule<'_>) -> Result<Schedule, DbError> {
        let id = random_hex(4);
        let r = sqlx::query(
            "INSERT INTO schedules (id, name, cron, at_ms, action, image, targets, transport, \
             min_machines, max_wait_ms, then_action, wake_lead_ms, created_by, created_ms, \
             fallback, personalize, layout) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17)",
        )
        .bind(&id)
        .bind(s.name)
        .bind(s.cron)
        .bind(s.at_ms)
        .bind(s.action)
        .bind(s.image)
        .bind(s.targets)
        .bind(s.transport)
        .bind(s.min_machines)
        .bind(s.max_wait_ms)
        .bind(s.then_action)
        .bind(s.wake_lead_ms)
        .bind(s.created_by)
        .bind(now_ms())
        .bind(s.fallback)
        .bind(serde_json::to_string(s.personalize).map_err(anyhow::Error::from)?)
        .bind(s.layout)
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(_) => self.schedule(&id).await,
            Err(e) if is_unique_violation(&e) => {
                Err(DbError::Exists(format!("schedule {:?}", s.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces schedule `id`'s settings; its timing counts from `since` (due times before
    /// it are not run).
    pub(crate) async fn update_schedule(
        &self,
        id: &str,
        s: &NewSchedule<'_>,
        since: i64,
    ) -> Result<Schedule, DbError> {
        let r = sqlx::query(
            "UPDATE schedules SET name = $1, cron = $2, at_ms = $3, action = $4, image = $5, \
             targets = $6, transport = $7, min_machines = $8, max_wait_ms = $9, \
             then_action = $10, wake_lead_ms = $11, created_ms = $12, fallback = $13, \
             personalize = $15, layout = $16 WHERE id = $14",
        )
        .bind(s.name)
        .bind(s.cron)
        .bind(s.at_ms)
        .bind(s.action)
        .bind(s.image)
        .bind(s.targets)
        .bind(s.transport)
        .bind(s.min_machines)
        .bind(s.max_wait_ms)
        .bind(s.then_action)
        .bind(s.wake_lead_ms)
        .bind(since)
        .bind(s.fallback)
        .bind(id)
        .bind(serde_json::to_string(s.personalize).map_err(anyhow::Error::from)?)
        .bind(s.layout)
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => self.schedule(id).await,
            Ok(_) => Err(DbError::NotFound(format!("schedule {id:?}"))),
            Err(e) if is_unique_violation(&e) => {
                Err(DbError::Exists(format!("schedule {:?}", s.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn schedules(&self) -> Result<Vec<Schedule>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules s ORDER BY name"
        ))
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(schedule).collect::<Result<_, _>>()?)
    }

    /// A schedule by name or id.
    pub(crate) async fn schedule(&self, key: &str) -> Result<Schedule, DbError> {
        sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules s WHERE s.id = $1 OR s.name = $1"
        ))
        .bind(key)
        .fetch_optional(&self.db.pool)
        .await?
        .map(|r| schedule(&r))
        .transpose()?
        .ok_or_else(|| DbError::NotFound(format!("schedule {key:?}")))
    }

    pub(crate) async fn remove_schedule(&self, key: &str) -> Result<Schedule, DbError> {
        let s = self.schedule(key).await?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM schedule_runs WHERE schedule_id = $1")
            .bind(&s.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(&s.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(s)
    }

    /// Claims one due time for `server`: true if this call inserted the row,
    /// false if a server (this one or another) had already.
    pub(crate) async fn claim_run(
        &self,
        schedule_id: &str,
        due_ms: i64,
        server: &str,
        outcome: &str,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(
            "INSERT INTO schedule_runs (schedule_id, due_ms, server, outcome, at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(schedule_id)
        .bind(due_ms)
        .bind(server)
        .bind(outcome)
        .bind(now_ms())
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            // The schedule was removed meanwhile.
            Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records how a claimed run ended.
    pub(crate) async fn finish_run(
        &self,
        schedule_id: &str,
        due_ms: i64,
        outcome: &str,
        detail: &str,
        deployment_id: Option<&str>,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE schedule_runs SET outcome = $1, detail = $2, deployment_id = $3 \
             WHERE schedule_id = $4 AND due_ms = $5",
        )
        .bind(outcome)
        .bind(detail)
        .bind(deployment_id)
        .bind(schedule_id)
        .bind(due_ms)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// A schedule's newest runs, newest first.
    pub(crate) async fn schedule_runs(
        &self,
        schedule_id: &str,
        limit: i64,
    ) -> Result<Vec<Run>, DbError> {
        let rows = sqlx::query(
            "SELECT due_ms, server, outcome, detail, deployment_id, at_ms \
             FROM schedule_runs WHERE schedule_id = $1 ORDER BY due_ms DESC LIMIT $2",
        )
        .bind(schedule_id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Run {
                    due_ms: r.try_get("due_ms")?,
                    server: r.try_get("server")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    deployment_id: r.try_get("deployment_id")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Run rows by outcome (for /metrics), and the number of schedules.
    pub(crate) async fn schedule_counts(&self) -> anyhow::Result<(i64, Vec<(String, i64)>)> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM schedules")
            .fetch_one(&self.db.pool)
            .await?
            .try_get("n")?;
        let rows = sqlx::query(
            "SELECT outcome, COUNT(*) AS n FROM schedule_runs GROUP BY outcome ORDER BY outcome",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let runs = rows
            .iter()
            .map(|r| Ok((r.try_get("outcome")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((n, runs))
    }
}
