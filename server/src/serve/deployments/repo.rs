//! Deployments and their tasks in the database: one task per machine, each with its state
//! machine (waiting → receiving → verifying → done | failed; or cancelled) and its agent
//! token (`drt_<task id>_<secret>`, valid while the task is not over).

use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::serve::db::{is_unique_violation, json_column, now_ms, parsed, random_hex, Db, DbError};
use crate::serve::inventory::mac::Mac;
use proto::api::{DeploymentState, Fallback, TaskKind, TaskState, Then, Transport};

/// Task states an agent is still working in.
pub(crate) const ACTIVE: &[&str] = &[
    "waiting",
    "receiving",
    "verifying",
    "seeding",
    "personalizing",
];

/// A deployment: one image to some machines.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Deployment {
    pub(crate) id: String,
    pub(crate) kind: TaskKind,
    pub(crate) image_id: String,
    pub(crate) image_name: String,
    pub(crate) targets: String,
    pub(crate) transport: Transport,
    pub(crate) min_machines: Option<i64>,
    pub(crate) max_wait_ms: Option<i64>,
    pub(crate) start_at_ms: Option<i64>,
    pub(crate) then_action: Then,
    pub(crate) state: DeploymentState,
    pub(crate) owner: String,
    pub(crate) session: Option<i64>,
    pub(crate) mcast_group: Option<String>,
    pub(crate) mcast_http: Option<String>,
    /// Where a multicast deployment's stragglers finish.
    pub(crate) fallback: Fallback,
    pub(crate) created_by: String,
    pub(crate) created_ms: i64,
    pub(crate) started_ms: Option<i64>,
    pub(crate) finished_ms: Option<i64>,
    /// How the machines are personalized.
    pub(crate) personalize: proto::api::Personalize,
    /// How the image is laid out on disks larger than its own (None: each machine's
    /// group's choice, else grow).
    pub(crate) layout: Option<proto::api::Layout>,
}

/// One machine's part of a deployment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Task {
    pub(crate) id: String,
    pub(crate) deployment_id: String,
    pub(crate) mac: String,
    pub(crate) state: TaskState,
    pub(crate) reason: Option<String>,
    pub(crate) bytes_done: i64,
    pub(crate) bytes_total: i64,
    pub(crate) rate_bps: i64,
    pub(crate) multicast_chunks: i64,
    pub(crate) unicast_chunks: i64,
    pub(crate) kept_chunks: i64,
    /// Payload bytes received from the BitTorrent swarm.
    pub(crate) swarm_bytes: i64,
    pub(crate) created_ms: i64,
    pub(crate) started_ms: Option<i64>,
    pub(crate) updated_ms: i64,
    pub(crate) finished_ms: Option<i64>,
    /// What personalization changed on the machine.
    pub(crate) personalized: Vec<String>,
}

impl Task {
    pub(crate) fn active(&self) -> bool {
        self.state.active()
    }
}

/// What a new deployment is.
pub(crate) struct NewDeployment<'a> {
    /// `restore` (an image to machines) or `capture` (a machine's disk to a new image).
    pub(crate) kind: &'a str,
    pub(crate) image_id: &'a str,
    pub(crate) image_name: &'a str,
    pub(crate) targets: &'a str,
    pub(crate) transport: &'a str,
    pub(crate) fallback: &'a str,
    pub(crate) min_machines: Option<i64>,
    pub(crate) max_wait_ms: Option<i64>,
    pub(crate) start_at_ms: Option<i64>,
    pub(crate) then_action: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) created_by: &'a str,
    pub(crate) bytes_total: i64,
    pub(crate) personalize: &'a proto::api::Personalize,
    pub(crate) layout: Option<&'a str>,
}

/// An agent's progress report.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TaskProgress {
    pub(crate) bytes_done: i64,
    pub(crate) rate_bps: i64,
    pub(crate) multicast_chunks: i64,
    pub(crate) unicast_chunks: i64,
    pub(crate) kept_chunks: i64,
    pub(crate) swarm_bytes: i64,
}

const DEPLOYMENT_COLUMNS: &str = "id, kind, image_id, image_name, targets, transport, \
    min_machines, max_wait_ms, start_at_ms, then_action, state, owner, session, mcast_group, \
    mcast_http, fallback, created_by, created_ms, started_ms, finished_ms, personalize, layout";

const TASK_COLUMNS: &str = "id, deployment_id, mac, state, reason, bytes_done, bytes_total, \
    rate_bps, multicast_chunks, unicast_chunks, kept_chunks, swarm_bytes, created_ms, \
    started_ms, updated_ms, finished_ms, personalized";

fn deployment(r: &AnyRow) -> Result<Deployment, sqlx::Error> {
    Ok(Deployment {
        id: r.try_get("id")?,
        kind: parsed(r, "kind")?,
        image_id: r.try_get("image_id")?,
        image_name: r.try_get("image_name")?,
        targets: r.try_get("targets")?,
        transport: parsed(r, "transport")?,
        min_machines: r.try_get("min_machines")?,
        max_wait_ms: r.try_get("max_wait_ms")?,
        start_at_ms: r.try_get("start_at_ms")?,
        then_action: parsed(r, "then_action")?,
        state: parsed(r, "state")?,
        owner: r.try_get("owner")?,
        session: r.try_get("session")?,
        mcast_group: r.try_get("mcast_group")?,
        mcast_http: r.try_get("mcast_http")?,
        fallback: parsed(r, "fallback")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        personalize: json_column(r, "personalize")?,
        layout: crate::serve::db::parsed_opt(r, "layout")?,
    })
}

fn task(r: &AnyRow) -> Result<Task, sqlx::Error> {
    Ok(Task {
        id: r.try_get("id")?,
        deployment_id: r.try_get("deployment_id")?,
        mac: r.try_get("mac")?,
        state: parsed(r, "state")?,
        reason: r.try_get("reason")?,
        bytes_done: r.try_get("bytes_done")?,
        bytes_total: r.try_get("bytes_total")?,
        rate_bps: r.try_get("rate_bps")?,
        multicast_chunks: r.try_get("multicast_chunks")?,
        unicast_chunks: r.try_get("unicast_chunks")?,
        kept_chunks: r.try_get("kept_chunks")?,
        swarm_bytes: r.try_get("swarm_bytes")?,
        created_ms: r.try_get("created_ms")?,
        started_ms: r.try_get("started_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        personalized: json_column(r, "personalized")?,
    })
}

/// `state IN ('waiting', ...)` for the active task states.
fn active_list() -> String {
    ACTIVE
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The deployments' and tasks' queries, through the server's database handle.
pub(crate) struct Deployments<'a> {
    db: &'a Db,
}

impl Db {
    /// The deployments' and tasks' queries.
    pub(crate) fn deployments(&self) -> Deployments<'_> {
        Deployments { db: self }
    }
}

impl Deployments<'_> {
    /// Creates a deployment with one waiting task per machine. A machine that already has
    /// an active task is refused (`Exists`), and then nothing is created.
    pub(crate) async fn create_deployment(
        &self,
        d: &NewDeployment<'_>,
        macs: &[Mac],
    ) -> Result<Deployment, DbError> {
        let mut tx = self.db.begin_write().await?;
        for mac in macs {
            let busy = sqlx::query(&format!(
                "SELECT deployment_id FROM tasks WHERE mac = $1 AND state IN ({})",
                active_list()
            ))
            .bind(mac.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = busy {
                let other: String = r.try_get("deployment_id")?;
                return Err(DbError::Exists(format!(
                    "machine {mac} already has a task (in deployment {other}): cancel it or \
                     wait until it ends"
                )));
            }
        }
        let now = now_ms();
        let id = loop {
            let id = random_hex(4);
            let r = sqlx::query(
                "INSERT INTO deployments (id, kind, image_id, image_name, targets, transport, \
                 min_machines, max_wait_ms, start_at_ms, then_action, state, owner, created_by, \
                 created_ms, fallback, personalize, layout) VALUES ($1, $14, $2, $3, $4, $5, \
                 $6, $7, $8, $9, $10, $11, $12, $13, $15, $16, $17)",
            )
            .bind(&id)
            .bind(d.image_id)
            .bind(d.image_name)
            .bind(d.targets)
            .bind(d.transport)
            .bind(d.min_machines)
            .bind(d.max_wait_ms)
            .bind(d.start_at_ms)
            .bind(d.then_action)
            .bind(if d.transport == Transport::Multicast.as_str() {
                "waiting"
            } else {
                "running"
            })
            .bind(d.owner)
            .bind(d.created_by)
            .bind(now)
            .bind(d.kind)
            .bind(d.fallback)
            .bind(serde_json::to_string(d.personalize).map_err(anyhow::Error::from)?)
            .bind(d.layout)
            .execute(&mut *tx)
            .await;
            match r {
                Ok(_) => break id,
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        for mac in macs {
            sqlx::query(
                "INSERT INTO tasks (id, deployment_id, mac, secret, state, bytes_done, \
                 bytes_total, rate_bps, multicast_chunks, unicast_chunks, kept_chunks, \
                 created_ms, updated_ms) VALUES ($1, $2, $3, '', 'waiting', 0, $4, 0, 0, 0, 0, \
                 $5, $5)",
            )
            .bind(random_hex(8))
            .bind(&id)
            .bind(mac.to_string())
            .bind(d.bytes_total)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE machines SET state = 'deploying' WHERE mac = $1")
                .bind(mac.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if d.transport == Transport::Unicast.as_str() {
            sqlx::query("UPDATE deployments SET started_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.deployment(&id).await
    }

    pub(crate) async fn deployment(&self, id: &str) -> Result<Deployment, DbError> {
        let r = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| DbError::NotFound(format!("deployment {id:?}")))?;
        Ok(deployment(&r)?)
    }

    /// Deployments, newest first.
    pub(crate) async fn deployments(&self, limit: i64) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY created_ms DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(deployment).collect::<Result<_, _>>()?)
    }

    /// Asks deployment `id`'s owner to start its stream now; false if it is not waiting.
    pub(crate) async fn request_start(&self, id: &str) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE deployments SET start_requested_ms = $1 WHERE id = $2 AND state = 'waiting'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Waiting deployments of `owner` asked (on another server) to start now; each request
    /// is taken once.
    pub(crate) async fn take_start_requests(&self, owner: &str) -> Result<Vec<String>, DbError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM deployments WHERE owner = $1 AND state = 'waiting' \
             AND start_requested_ms IS NOT NULL",
        )
        .bind(owner)
        .fetch_all(&self.db.pool)
        .await?;
        for id in &ids {
            sqlx::query("UPDATE deployments SET start_requested_ms = NULL WHERE id = $1")
                .bind(id)
                .execute(&self.db.pool)
                .await?;
        }
        Ok(ids)
    }

    /// Deployments not over, run by `owner`.
    pub(crate) async fn live_deployments(&self, owner: &str) -> anyhow::Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE owner = $1 AND state IN \
             ('waiting', 'running') ORDER BY created_ms"
        ))
        .bind(owner)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(deployment).collect::<Result<_, _>>()?)
    }

    pub(crate) async fn tasks_of(&self, deployment_id: &str) -> anyhow::Result<Vec<Task>> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE deployment_id = $1 ORDER BY mac"
        ))
        .bind(deployment_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(task).collect::<Result<_, _>>()?)
    }

    pub(crate) async fn task(&self, id: &str) -> Result<Task, DbError> {
        let r = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| DbError::NotFound(format!("task {id:?}")))?;
        Ok(task(&r)?)
    }

    /// The machine's active task, if it has one.
    pub(crate) async fn active_task(&self, mac: Mac) -> anyhow::Result<Option<Task>> {
        let r = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE mac = $1 AND state IN ({})",
            active_list()
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(r.as_ref().map(task).transpose()?)
    }

    /// Sets what a task's work amounts to (a capture learns it when its agent has read the
    /// disk's allocation).
    pub(crate) async fn set_task_total(&self, id: &str, bytes_total: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE tasks SET bytes_total = $1 WHERE id = $2")
            .bind(bytes_total)
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// A new token for the task, handed out to `issued_to` (an address, for the record).
    /// Tokens handed out before keep working: a stranger's request can never cut off the
    /// agent that is writing the disk (and the caller hands tokens only to the machine).
    pub(crate) async fn issue_task_token(
        &self,
        task_id: &str,
        issued_to: &str,
    ) -> anyhow::Result<String> {
        let secret = random_hex(24);
        sqlx::query(
            "INSERT INTO task_tokens (task_id, secret, issued_ms, issued_to) VALUES ($1, $2, $3, $4)",
        )
        .bind(task_id)
        .bind(blake3::hash(secret.as_bytes()).to_hex().to_string())
        .bind(now_ms())
        .bind(issued_to)
        .execute(&self.db.pool)
        .await?;
        Ok(format!("drt_{task_id}_{secret}"))
    }

    /// The task a `drt_` token opens, if the token is right (active or over: the caller
    /// tells an agent whose task ended from one with a wrong token).
    pub(crate) async fn check_task_token(&self, token: &str) -> anyhow::Result<Option<Task>> {
        let Some((id, secret)) = token.strip_prefix("drt_").and_then(|t| t.split_once('_')) else {
            return Ok(None);
        };
        let r = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS}, secret FROM tasks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let mut stored: Vec<String> = vec![r.try_get("secret")?];
        let issued = sqlx::query("SELECT secret FROM task_tokens WHERE task_id = $1")
            .bind(id)
            .fetch_all(&self.db.pool)
            .await?;
        for row in &issued {
            stored.push(row.try_get("secret")?);
        }
        let t = task(&r)?;
        let shown = blake3::hash(secret.as_bytes());
        // blake3::Hash compares in constant time; every stored hash is compared.
        let ok = stored
            .iter()
            .filter_map(|h| blake3::Hash::from_hex(h).ok())
            .fold(false, |ok, h| ok | (h == shown));
        Ok(ok.then_some(t))
    }

    /// Records an agent's progress; `state` is `receiving` or `verifying`. Returns false when
    /// the task is over (cancelled, say): the agent should stop.
    pub(crate) async fn task_progress(
        &self,
        id: &str,
        state: &str,
        p: TaskProgress,
    ) -> anyhow::Result<bool> {
        let now = now_ms();
        let n = sqlx::query(&format!(
            "UPDATE tasks SET state = $1, bytes_done = $2, rate_bps = $3, multicast_chunks = $4, \
             unicast_chunks = $5, kept_chunks = $6, updated_ms = $7, \
             started_ms = COALESCE(started_ms, $7), swarm_bytes = $9 WHERE id = $8 AND state IN \
             ({})",
            active_list()
        ))
        .bind(state)
        .bind(p.bytes_done)
        .bind(p.rate_bps)
        .bind(p.multicast_chunks)
        .bind(p.unicast_chunks)
        .bind(p.kept_chunks)
        .bind(now)
        .bind(id)
        .bind(p.swarm_bytes)
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Ends a task (`done`, `failed` or `cancelled`, with a reason) if it is still active,
    /// updates its machine, and ends its deployment when no task is left. Returns whether
    /// this call ended it.
    pub(crate) async fn finish_task(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        p: Option<TaskProgress>,
        personalized: &[String],
    ) -> anyhow::Result<bool> {
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        // The deployment's row is locked first (every writer of a deployment's tasks does
        // so), then the task read: on PostgreSQL, machines finishing at once would otherwise
        // each see the others still active, and none would end the deployment.
        let dep: String = sqlx::query("SELECT deployment_id FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .with_context(|| format!("no task {id}"))?
            .try_get("deployment_id")?;
        sqlx::query("UPDATE deployments SET state = state WHERE id = $1")
            .bind(&dep)
            .execute(&mut *tx)
            .await?;
        let t = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(task)
            .transpose()?
            .with_context(|| format!("no task {id}"))?;
        if !t.active() {
            return Ok(false);
        }
        let p = p.unwrap_or(TaskProgress {
            bytes_done: t.bytes_done,
            rate_bps: 0,
            multicast_chunks: t.multicast_chunks,
            unicast_chunks: t.unicast_chunks,
            kept_chunks: t.kept_chunks,
            swarm_bytes: t.swarm_bytes,
        });
        sqlx::query(
            "UPDATE tasks SET state = $1, reason = $2, finished_ms = $3, updated_ms = $3, \
             bytes_done = $4, rate_bps = 0, multicast_chunks = $5, unicast_chunks = $6, \
             kept_chunks = $7, swarm_bytes = $9, personalized = $10 WHERE id = $8",
        )
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(p.bytes_done)
        .bind(p.multicast_chunks)
        .bind(p.unicast_chunks)
        .bind(p.kept_chunks)
        .bind(id)
        .bind(p.swarm_bytes)
        .bind(serde_json::to_string(personalized)?)
        .execute(&mut *tx)
        .await?;
        let machine_state = match state {
            "done" => "idle",
            "failed" => "failed",
            _ => "idle",
        };
        sqlx::query("UPDATE machines SET state = $1 WHERE mac = $2")
            .bind(machine_state)
            .bind(&t.mac)
            .execute(&mut *tx)
            .await?;
        self.settle_deployment(&mut tx, &t.deployment_id, now)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a deployment whose tasks are all over: `done` if every one is, else `failed`
    /// (a cancelled deployment stays cancelled).
    async fn settle_deployment(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let rows = sqlx::query("SELECT state FROM tasks WHERE deployment_id = $1")
            .bind(id)
            .fetch_all(&mut **tx)
            .await?;
        let states: Vec<String> = rows
            .iter()
            .map(|r| r.try_get("state"))
            .collect::<Result<_, _>>()?;
        if states.iter().any(|s| ACTIVE.contains(&s.as_str())) {
            return Ok(());
        }
        let end = if states.iter().all(|s| s == "done") {
            "done"
        } else {
            "failed"
        };
        sqlx::query(
            "UPDATE deployments SET state = $1, finished_ms = $2 WHERE id = $3 AND state IN \
             ('waiting', 'running')",
        )
        .bind(end)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Cancels a deployment and its active tasks. `NotFound`, or `Exists`-style conflict
    /// when it is already over (returned as `Ok(false)`).
    pub(crate) async fn cancel_deployment(&self, id: &str, why: &str) -> Result<bool, DbError> {
        let d = self.deployment(id).await?;
        if !d.state.active() {
            return Ok(false);
        }
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE deployments SET state = 'cancelled', finished_ms = $1, session = NULL \
             WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let macs = sqlx::query(&format!(
            "SELECT mac FROM tasks WHERE deployment_id = $1 AND state IN ({})",
            active_list()
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        for r in &macs {
            let mac: String = r.try_get("mac")?;
            sqlx::query("UPDATE machines SET state = 'idle' WHERE mac = $1")
                .bind(mac)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!(
            "UPDATE tasks SET state = 'cancelled', reason = $1, finished_ms = $2, \
             updated_ms = $2, rate_bps = 0 WHERE deployment_id = $3 AND state IN ({})",
            active_list()
        ))
        .bind(why)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The deployment's live multicast session (or none: `session` None).
    pub(crate) async fn set_session(
        &self,
        id: &str,
        session: Option<(u32, String, String)>,
    ) -> anyhow::Result<()> {
        let (s, g, h) = match session {
            Some((s, g, h)) => (Some(i64::from(s)), Some(g), Some(h)),
            None => (None, None, None),
        };
        sqlx::query(
            "UPDATE deployments SET session = $1, mcast_group = $2, mcast_http = $3 WHERE id = $4",
        )
        .bind(s)
        .bind(g)
        .bind(h)
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// A waiting deployment's stream started.
    pub(crate) async fn deployment_started(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE deployments SET state = 'running', started_ms = COALESCE(started_ms, $1) \
             WHERE id = $2 AND state = 'waiting'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }
}

impl Deployments<'_> {
    /// (table, state, count) of deployments and tasks, for `/metrics`.
    pub(crate) async fn deployment_counts(
        &self,
    ) -> anyhow::Result<Vec<(&'static str, String, i64)>> {
        let mut out = Vec::new();
        for table in ["deployments", "tasks"] {
            let rows = sqlx::query(&format!(
                "SELECT state, COUNT(*) AS n FROM {table} GROUP BY state ORDER BY state"
            ))
            .fetch_all(&self.db.pool)
            .await?;
            for r in rows {
                out.push((table, r.try_get("state")?, r.try_get("n")?));
            }
        }
        Ok(out)
    }

    /// An agent said hello: the machine is seen now, with its disk; an unknown MAC is
    /// registered (`registered = hello`) and gets nothing until an admin gives it a task.
    pub(crate) async fn machine_hello(
        &self,
        mac: Mac,
        disk_serial: Option<&str>,
        disk_size: Option<i64>,
    ) -> Result<crate::serve::db::Machine, DbError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE machines SET last_seen_ms = $1, disk_serial = COALESCE($2, disk_serial), \
             disk_size = COALESCE($3, disk_size) WHERE mac = $4",
        )
        .bind(now)
        .bind(disk_serial)
        .bind(disk_size)
        .bind(mac.to_string())
        .execute(&self.db.pool)
        .await?
        .rows_affected();
        if n == 0 {
            let r = sqlx::query(
                "INSERT INTO machines (mac, name, group_name, disk_serial, disk_size, state, \
                 registered, last_seen_ms, created_ms) VALUES ($1, $2, NULL, $3, $4, \
                 'registered', 'hello', $5, $5)",
            )
            .bind(mac.to_string())
            .bind(mac.default_name())
            .bind(disk_serial)
            .bind(disk_size)
            .bind(now)
            .execute(&self.db.pool)
            .await;
            match r {
                Ok(_) => {}
                // Two hellos at once: the other registered it.
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.db.inventory().machine(mac).await
    }
}
