//! The scheduler's timing under paused tokio time: a fake host keeps schedules and run rows
//! in memory (as the database would, across "restarts") and records when each schedule
//! fired, in virtual time.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::Instant;

use super::*;

const MIN: i64 = 60_000;

/// 2026-11-25 10:02:00 UTC. Schedules below fire at multiples of 5 minutes, which are the
/// same instants in every time zone (all offsets are multiples of 15 minutes).
const BASE: i64 = 1_795_600_920_000;

struct Fake {
    base_ms: i64,
    start: Instant,
    schedules: Mutex<Vec<Schedule>>,
    /// (schedule name, due) → (outcome, server that claimed it).
    runs: Mutex<BTreeMap<(String, i64), (String, usize)>>,
    /// (virtual time, schedule name, start_at) of each fire.
    fired: Mutex<Vec<(i64, String, Option<i64>)>>,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base_ms: BASE,
            start: Instant::now(),
            schedules: Mutex::new(Vec::new()),
            runs: Mutex::new(BTreeMap::new()),
            fired: Mutex::new(Vec::new()),
        })
    }

    fn add(&self, name: &str, cron: Option<&str>, at_ms: Option<i64>, action: &str) {
        self.schedules.lock().unwrap().push(Schedule {
            id: format!("id-{name}"),
            name: name.into(),
            cron: cron.map(Into::into),
            at_ms,
            action: action.parse().unwrap(),
            image: (action == "deploy").then(|| "lab".into()),
            targets: "room1".into(),
            transport: Transport::Multicast,
            fallback: Fallback::Unicast,
            min_machines: None,
            max_wait_ms: None,
            then_action: Then::Reboot,
            wake_lead_ms: None,
            created_by: "test".into(),
            created_ms: self.base_ms + self.start.elapsed().as_millis() as i64,
            last_due_ms: None,
            personalize: Default::default(),
            layout: None,
        });
    }

    fn fired(&self) -> Vec<(i64, String, Option<i64>)> {
        self.fired.lock().unwrap().clone()
    }

    fn outcomes(&self, name: &str) -> Vec<(i64, String)> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, due), (o, _))| (*due, o.clone()))
            .collect()
    }
}

/// One server's view of the shared fake database.
struct Server(Arc<Fake>, usize);

impl Host for Server {
    fn now_ms(&self) -> i64 {
        self.0.base_ms + self.0.start.elapsed().as_millis() as i64
    }

    async fn schedules(&self) -> anyhow::Result<Vec<Schedule>> {
        let runs = self.0.runs.lock().unwrap();
        Ok(self
            .0
            .schedules
            .lock()
            .unwrap()
            .iter()
            .map(|s| Schedule {
                last_due_ms: runs
                    .keys()
                    .filter(|(n, _)| n == &s.name)
                    .map(|(_, d)| *d)
                    .max(),
                ..s.clone()
            })
            .collect())
    }

    async fn claim(&self, s: &Schedule, due_ms: i64, outcome: &str) -> anyhow::Result<bool> {
        let mut runs = self.0.runs.lock().unwrap();
        let key = (s.name.clone(), due_ms);
        if runs.contains_key(&key) {
            return Ok(false);
        }
        runs.insert(key, (outcome.into(), self.1));
        Ok(true)
    }

    async fn finish(
        &self,
        s: &Schedule,
        due_ms: i64,
        outcome: &str,
        _detail: &str,
        _deployment: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut runs = self.0.runs.lock().unwrap();
        let r = runs.get_mut(&(s.name.clone(), due_ms)).expect("claimed");
        r.0 = outcome.into();
        Ok(())
    }

    async fn fire(&self, s: &Schedule, start_at_ms: Option<i64>) -> anyhow::Result<Fired> {
        let now = self.now_ms();
        self.0
            .fired
            .lock()
            .unwrap()
            .push((now, s.name.clone(), start_at_ms));
        Ok(Fired {
            detail: "fired".into(),
            deployment: None,
        })
    }
}

const SETTINGS: Settings = Settings {
    grace_ms: 60 * MIN,
    default_lead_ms: 5 * MIN,
};

fn start(fake: &Arc<Fake>, server: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(
        Arc::new(Server(fake.clone(), server)),
        SETTINGS,
        Arc::new(tokio::sync::Notify::new()),
    ))
}

/// Advances virtual time to `BASE + ms`.
async fn until(fake: &Fake, ms: i64) {
    tokio::time::sleep_until(fake.start + Duration::from_millis(ms as u64)).await;
}

/// `fired` matches `want` (minutes after BASE), to the virtual millisecond or nearly.
fn assert_fired(fired: &[(i64, String, Option<i64>)], want: &[(i64, &str, Option<i64>)]) {
    assert_eq!(
        fired.len(),
        want.len(),
        "fired {:?}",
        fired
            .iter()
            .map(|(t, n, s)| (
                (t - BASE) as f64 / MIN as f64,
                n,
                s.map(|s| (s - BASE) / MIN)
            ))
            .collect::<Vec<_>>()
    );
    for ((t, n, s), (wt, wn, ws)) in fired.iter().zip(want) {
        assert_eq!(n, wn);
        assert!(
            (t - (BASE + wt * MIN)).abs() < 50,
            "{n} fired at {} min, expected {wt} min",
            (t - BASE) as f64 / MIN as f64
        );
        assert_eq!(*s, ws.map(|w| BASE + w * MIN), "{n}'s start time");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cron_redeploy_fires_its_wake_lead_ahead_and_a_wake_schedule_on_time() {
    let fake = Fake::new();
    // Due at 10:15, 10:30, 10:45 (13, 28, 43 min after BASE); fires 5 minutes ahead.
    fake.add("nightly", Some("*/15 * * * *"), None, "deploy");
    // Due at 10:20, 10:40: fires on time.
    fake.add("morning", Some("*/20 * * * *"), None, "wake");
    let task = start(&fake, 0);
    until(&fake, 42 * MIN).await;
    task.abort();
    assert_fired(
        &fake.fired(),
        &[
            (8, "nightly", Some(13)),
            (18, "morning", None),
            (23, "nightly", Some(28)),
            (38, "nightly", Some(43)),
            (38, "morning", None),
        ],
    );
    assert_eq!(
        fake.outcomes("nightly"),
        vec![
            (BASE + 13 * MIN, "done".into()),
            (BASE + 28 * MIN, "done".into()),
            (BASE + 43 * MIN, "done".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_the_schedule_and_runs_a_missed_run_once_within_the_grace() {
    let fake = Fake::new();
    fake.add("nightly", Some("*/15 * * * *"), None, "deploy");
    let task = start(&fake, 0);
    until(&fake, 10 * MIN).await; // fired at 8 for 13
    task.abort();
    // Restarted before the due time it already fired for: nothing twice.
    let task = start(&fake, 0);
    until(&fake, 24 * MIN).await; // fired at 23 for 28
    task.abort();
    // Down from 24 to 65 minutes: 43 and 58 (10:45, 11:00) pass unseen.
    until(&fake, 65 * MIN).await;
    let task = start(&fake, 0);
    until(&fake, 70 * MIN).await;
    task.abort();
    assert_fired(
        &fake.fired(),
        &[
            (8, "nightly", Some(13)),
            (23, "nightly", Some(28)),
            // Late: runs at once, its stream by the deployment's own start policy.
            (65, "nightly", None),
            // Then on time again: 11:15 fires at 11:10.
            (68, "nightly", Some(73)),
        ],
    );
    assert_eq!(
        fake.outcomes("nightly"),
        vec![
            (BASE + 13 * MIN, "done".into()),
            (BASE + 28 * MIN, "done".into()),
            (BASE + 43 * MIN, "missed".into()),
            (BASE + 58 * MIN, "done".into()),
            (BASE + 73 * MIN, "done".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_missed_by_more_than_the_grace_is_recorded_not_run() {
    let fake = Fake::new();
    fake.add("once", None, Some(BASE + 28 * MIN), "deploy");
    fake.add("soon", None, Some(BASE + 20 * MIN), "wake");
    // The server is down from the start until 28 + 61 minutes.
    until(&fake, 89 * MIN).await;
    let task = start(&fake, 0);
    until(&fake, 120 * MIN).await;
    task.abort();
    // "soon" (due at 20) is 69 min late, "once" 61: both past the hour of grace.
    assert_fired(&fake.fired(), &[]);
    assert_eq!(
        fake.outcomes("once"),
        vec![(BASE + 28 * MIN, "missed".into())]
    );
    assert_eq!(
        fake.outcomes("soon"),
        vec![(BASE + 20 * MIN, "missed".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn two_servers_on_one_database_fire_each_run_once() {
    let fake = Fake::new();
    fake.add("nightly", Some("*/15 * * * *"), None, "deploy");
    fake.add("morning", Some("*/20 * * * *"), None, "wake");
    let a = start(&fake, 1);
    let b = start(&fake, 2);
    until(&fake, 60 * MIN).await;
    a.abort();
    b.abort();
    assert_fired(
        &fake.fired(),
        &[
            (8, "nightly", Some(13)),
            (18, "morning", None),
            (23, "nightly", Some(28)),
            (38, "nightly", Some(43)),
            (38, "morning", None),
            (53, "nightly", Some(58)),
            (58, "morning", None),
        ],
    );
    let runs = fake.runs.lock().unwrap();
    assert_eq!(runs.len(), 7);
}

#[test]
fn timing_checks() {
    let at = When::At(BASE);
    assert!(check_timing(&at, 0, BASE + 1)
        .unwrap_err()
        .contains("in the past"));
    assert!(check_timing(&at, 0, BASE - 1).is_ok());
    let every_minute = When::Cron(Box::new(parse_cron("* * * * *").unwrap()));
    let e = check_timing(&every_minute, 5 * MIN, BASE).unwrap_err();
    assert!(e.contains("wake lead"), "{e}");
    assert!(check_timing(&every_minute, 0, BASE).is_ok());
    assert!(parse_cron("61 * * * *").unwrap_err().contains("61 * * * *"));
    assert!(parse_cron("nonsense").is_err());
    let daily = When::Cron(Box::new(parse_cron("@daily").unwrap()));
    let n = daily.next_after(BASE).unwrap();
    assert!(n > BASE && n - BASE <= 24 * 60 * MIN);
    assert_eq!(daily.last_until(n), Some(n));
    assert_eq!(daily.last_until(n - 1).map(|p| n - p), Some(24 * 60 * MIN));
}
