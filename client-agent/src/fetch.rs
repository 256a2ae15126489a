//! The one fetch path of a restore: the disk is opened and scanned once into a
//! [`Target`], then the sources the task's plan names ([`proto::api::AgentTask::plan`]:
//! multicast, the swarm, unicast) each fill what is still missing, in that order, through
//! [`Fetch`], and say how they ended in one typed [`Filled`]. The last source, unicast, takes
//! whatever is left or fails the task.
//!
//! The sources decide nothing about the disk: the target checks every chunk against its hash
//! before writing and reads it back after, and counts what came by which way.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::api::{AgentTask, DeploymentState, MulticastAssignment, Transport};
use tokio::sync::mpsc;
use tracing::{info, warn};
use transport::net::Iface;
use transport::receive::{self, ApiFetch, Out, ReceiveOptions};
use transport::target::{Stored, Target, Via};

use crate::api::Api;
use crate::task::{Reporter, Stop, SERVER_AWAY};

/// Unicast chunk downloads at once.
const PARALLEL_FETCHES: usize = 4;
/// How often a chunk that arrives wrong is fetched again before the task fails.
const MAX_BAD_FETCHES: u32 = 3;
/// How long to listen for the deployment's session before asking the server again.
const SESSION_WAIT: Duration = Duration::from_secs(20);
/// Seconds an agent asks again for a waiting multicast deployment's session before it
/// leaves the image to the next source.
const SESSION_ANNOUNCE_WAIT_S: u32 = 60;

/// How a source ended, when it did not fail the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filled {
    /// Every chunk is on the target.
    Complete,
    /// The source gave what it could (why not more: for the log); the next one in the plan
    /// takes the rest.
    Partial(String),
}

/// A source's run.
pub(crate) type Filling<'a> = Pin<Box<dyn Future<Output = Result<Filled, Stop>> + Send + 'a>>;

/// A source of chunks: fills what the target still misses.
pub(crate) trait Fetch: Send {
    /// Stores what it can get of the target's missing chunks. An error ends the task (the
    /// disk failing, the server ending it); anything the next source can make up for is a
    /// [`Filled::Partial`].
    fn fill<'a>(&'a mut self, target: &'a Arc<Target>) -> Filling<'a>;
}

/// The deployment's multicast session (its repairs fetched from the API during the stream).
pub(crate) struct Multicast<'a> {
    pub(crate) api: &'a Api,
    pub(crate) iface: &'a Iface,
    pub(crate) task: AgentTask,
    /// Leave once the rest would come over unicast only: the swarm is next.
    pub(crate) leave_missing: bool,
}

impl Fetch for Multicast<'_> {
    fn fill<'a>(&'a mut self, target: &'a Arc<Target>) -> Filling<'a> {
        Box::pin(self.run(target))
    }
}

impl Multicast<'_> {
    async fn run(&mut self, target: &Arc<Target>) -> Result<Filled, Stop> {
        // A task can reach the agent before its deployment's session is announced (the server
        // starts the session right after creating the tasks): while the deployment waits for
        // its stream, ask again rather than take the whole image another way.
        let mut asked = 0;
        while self.task.multicast.is_none()
            && self.task.deployment_state == DeploymentState::Waiting
            && asked < SESSION_ANNOUNCE_WAIT_S
        {
            if asked == 0 {
                info!("the deployment's multicast session is not announced yet: waiting for it");
            }
            asked += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.task = fetch_task(self.api).await?;
        }
        let mut unheard = None;
        loop {
            let Some(mc) = self.task.multicast.clone() else {
                return Ok(Filled::Partial(
                    match self.task.deployment_state {
                        DeploymentState::Waiting => {
                            "no multicast session was announced within a minute"
                        }
                        DeploymentState::Running => {
                            "the deployment's stream is over or was lost with a server restart"
                        }
                        _ => "the deployment is over",
                    }
                    .into(),
                ));
            };
            match self.session(&mc, target).await {
                Ok(r) => {
                    info!(
                        "received in {:.1} s: {} chunk(s) by multicast, {} over unicast, {} already on the disk",
                        r.seconds, r.multicast_chunks, r.unicast_chunks, r.kept_chunks
                    );
                    return Ok(if target.complete() {
                        Filled::Complete
                    } else {
                        Filled::Partial(format!(
                            "left the stream with {} chunk(s) missing",
                            r.missing_chunks
                        ))
                    });
                }
                Err(e) if e.downcast_ref::<receive::NoSession>().is_some() => {
                    // The session may have ended (late machine) or been replaced (server
                    // restart): ask again. A session the server still names but that stays
                    // silent (its server is gone) is given up after two tries.
                    if unheard == Some(mc.session) {
                        return Ok(Filled::Partial(format!(
                            "session {:08x} is not heard here",
                            mc.session
                        )));
                    }
                    unheard = Some(mc.session);
                    self.task = fetch_task(self.api).await?;
                }
                Err(e) => return Ok(Filled::Partial(format!("multicast failed: {e:#}"))),
            }
        }
    }

    async fn session(
        &self,
        mc: &MulticastAssignment,
        target: &Arc<Target>,
    ) -> anyhow::Result<receive::Received> {
        let group: SocketAddrV4 = mc
            .group
            .parse()
            .map_err(|e| anyhow::anyhow!("the task's multicast group {:?}: {e}", mc.group))?;
        info!(%group, session = format!("{:08x}", mc.session), "joining the multicast session");
        let (tx, mut events) = mpsc::unbounded_channel::<receive::Event>();
        let log = tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    // Progress goes to the server from the target, once a second.
                    receive::Event::Stats(_) => {}
                    e => info!("{e}"),
                }
            }
        });
        let r = receive::run(ReceiveOptions {
            iface: self.iface.clone(),
            group,
            out: Out::Target(target.clone()),
            wait: Some(SESSION_WAIT),
            session: Some(mc.session),
            fetch_from: Some(ApiFetch {
                base: self.api.base.clone(),
                token: self.api.token.clone().unwrap_or_default(),
            }),
            events: Some(tx),
            leave_missing: self.leave_missing,
        })
        .await;
        let _ = log.await;
        r
    }
}

/// The image's BitTorrent swarm: librqbit writes beside the target, which then checks the
/// chunks it misses on the disk.
pub(crate) struct Swarm<'a> {
    pub(crate) api: &'a Api,
    pub(crate) args: &'a crate::Args,
    pub(crate) task: &'a AgentTask,
    pub(crate) manifest: &'a imaging::manifest::Manifest,
    pub(crate) reporter: &'a Reporter,
    /// The machine's seed, once the swarm gave the whole torrent.
    pub(crate) seeding: Option<crate::swarm::Seeding>,
}

impl Fetch for Swarm<'_> {
    fn fill<'a>(&'a mut self, target: &'a Arc<Target>) -> Filling<'a> {
        Box::pin(async move {
            let s = crate::swarm::receive(self.api, self.args, self.task, self.manifest, target)
                .await?;
            self.reporter
                .swarm_bytes
                .store(s.fetched, std::sync::atomic::Ordering::Relaxed);
            self.seeding = s.seeding;
            let t = target.clone();
            let found = tokio::task::spawn_blocking(move || t.check_missing(Via::Swarm))
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?
                .map_err(|e| Stop::Failed(format!("checking what the swarm wrote: {e:#}")))?;
            info!("{found} chunk(s) from the swarm check out on the disk");
            Ok(if target.complete() {
                Filled::Complete
            } else {
                Filled::Partial(format!(
                    "the swarm left {} chunk(s) missing",
                    target.missing().len()
                ))
            })
        })
    }
}

/// HTTP chunk fetches from the server, [`PARALLEL_FETCHES`] at a time: the last source,
/// which brings everything still missing or fails.
pub(crate) struct Unicast<'a> {
    pub(crate) api: &'a Api,
}

impl Fetch for Unicast<'_> {
    fn fill<'a>(&'a mut self, target: &'a Arc<Target>) -> Filling<'a> {
        Box::pin(self.run(target))
    }
}

impl Unicast<'_> {
    async fn run(&self, target: &Arc<Target>) -> Result<Filled, Stop> {
        let mut queue: VecDeque<usize> = target.missing().into();
        if queue.is_empty() {
            return Ok(Filled::Complete);
        }
        info!("fetching {} chunk(s) over unicast", queue.len());
        let started = std::time::Instant::now();
        let (mut fetched, mut bad) = (0u64, vec![0u32; target.chunks()]);
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < PARALLEL_FETCHES {
                let Some(i) = queue.pop_front() else { break };
                let (api, target) = (self.api.clone(), target.clone());
                // A live stream's chunk is asked for by its place (its hash comes with it).
                let path = match target.sink().desc().live {
                    true => format!("/agent/stream/{i}"),
                    false => format!("/chunks/{}", target.sink().hash_hex(i)),
                };
                running.spawn(async move {
                    let data = api
                        .retry("fetching a chunk", Some(SERVER_AWAY), || api.bytes(&path))
                        .await
                        .map_err(Stop::from)?;
                    let r =
                        tokio::task::spawn_blocking(move || target.store(i, &data, Via::Unicast))
                            .await
                            .map_err(|e| Stop::Failed(e.to_string()))?
                            .map_err(|e| Stop::Failed(format!("writing the disk: {e:#}")))?;
                    Ok::<_, Stop>((i, r))
                });
            }
            let Some(r) = running.join_next().await else {
                break;
            };
            let (i, stored) = r.map_err(|e| Stop::Failed(e.to_string()))??;
            match stored {
                Stored::Written { .. } => fetched += 1,
                Stored::Held => {}
                Stored::Wrong(why) => {
                    warn!("{why}: fetching it again");
                    bad[i] += 1;
                    if bad[i] >= MAX_BAD_FETCHES {
                        return Err(Stop::Failed(format!(
                            "chunk {i} arrived wrong {MAX_BAD_FETCHES} times"
                        )));
                    }
                    queue.push_back(i);
                }
            }
        }
        info!(
            "fetched {fetched} chunk(s) over unicast in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Filled::Complete)
    }
}

/// The task as the server has it now.
pub(crate) async fn fetch_task(api: &Api) -> Result<AgentTask, Stop> {
    let r = api
        .retry("fetching the task", None, || {
            api.get::<proto::api::TaskReply>("/agent/task")
        })
        .await?;
    Ok(r.task)
}

/// Why the plan goes on after `via` (for the log).
pub(crate) fn next_line(via: Transport, why: &str, left: usize, next: Option<Transport>) -> String {
    match next {
        Some(n) => format!("{via}: {why}; {left} chunk(s) left for {n}"),
        None => format!("{via}: {why}; {left} chunk(s) missing"),
    }
}
