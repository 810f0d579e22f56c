//! The daemon's health watch: probes every running component that has a health check, at its
//! interval, records `health.failed` / `health.ok` when it turns unhealthy or recovers, and asks
//! the monitor to apply the restart policy to an unhealthy one. What it last saw is on a board
//! `ps` and `status` read.
//!
//! [`Tracker::observe`] (the state machine) is pure; [`watch`] runs the probes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::monitor::{RestartPolicy, Trigger};
use super::{probe, Agent};
use crate::plan::{instance_name, HealthCheck};
use crate::registry::{Desired, NewEvent};

/// What a component's probes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not yet healthy, and not yet failed enough to be unhealthy.
    Starting,
    Healthy,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// A change worth an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// `retries` probes in a row failed (outside the start period); the last one's reason.
    Failed(String),
    /// Healthy again after being unhealthy.
    Recovered,
}

/// One instance's probe history.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub id: String,
    pub status: Status,
    /// The last failed probe's reason, while not healthy.
    pub detail: Option<String>,
    since: Instant,
    failures: u32,
    next: Instant,
    /// Restarted for being unhealthy: its first success is a recovery.
    after_failure: bool,
    /// Which tracker a probe's result is for (a restart starts a new one).
    generation: u64,
    /// A probe of it is running.
    in_flight: bool,
}

impl Tracker {
    pub fn new(id: &str, now: Instant) -> Tracker {
        Tracker { id: id.to_string(), status: Status::Starting, detail: None, since: now, failures: 0, next: now, after_failure: false, generation: 0, in_flight: false }
    }

    /// Take one probe's result at `now`.
    pub fn observe(&mut self, result: Result<(), String>, check: &HealthCheck, now: Instant) -> Option<Transition> {
        self.next = now + check.interval;
        match result {
            Ok(()) => {
                let was = std::mem::replace(&mut self.status, Status::Healthy);
                let recovered = was == Status::Unhealthy || std::mem::take(&mut self.after_failure);
                self.failures = 0;
                self.detail = None;
                recovered.then_some(Transition::Recovered)
            }
            Err(why) => {
                self.detail = Some(why.clone());
                // Failures while it starts do not count (until it was healthy once).
                if self.status == Status::Starting && now.duration_since(self.since) < check.start_period {
                    return None;
                }
                self.failures += 1;
                if self.failures >= check.retries && self.status != Status::Unhealthy {
                    self.status = Status::Unhealthy;
                    return Some(Transition::Failed(why));
                }
                None
            }
        }
    }
}

/// What the watch last saw, per (service, component).
#[derive(Debug, Default)]
pub struct Board {
    trackers: Mutex<HashMap<(String, String), Tracker>>,
    generations: AtomicU64,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Tracker>> {
        self.trackers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh tracker for instance `id`, of a generation no earlier probe carries.
    fn tracker(&self, id: &str, now: Instant) -> Tracker {
        Tracker { generation: self.generations.fetch_add(1, Ordering::SeqCst) + 1, ..Tracker::new(id, now) }
    }

    /// Whether instance `id` of the component is (still) unhealthy.
    pub fn is_unhealthy(&self, service: &str, component: &str, id: &str) -> bool {
        self.view(service, component, Some(id)).is_some_and(|(s, _)| s == Status::Unhealthy)
    }

    /// Status and reason for the instance `id` of a component (None: nobody probed it yet).
    pub fn view(&self, service: &str, component: &str, id: Option<&str>) -> Option<(Status, Option<String>)> {
        let t = self.lock();
        let t = t.get(&(service.to_string(), component.to_string()))?;
        id.is_none_or(|id| id == t.id).then(|| (t.status, t.detail.clone()))
    }

    /// The deploy's gate saw the fresh instance `id` healthy.
    pub fn healthy(&self, service: &str, component: &str, id: &str, check: &HealthCheck) {
        let now = Instant::now();
        let mut t = self.tracker(id, now);
        t.observe(Ok(()), check, now);
        self.lock().insert((service.to_string(), component.to_string()), t);
    }

    /// The instance was restarted (or a restart was tried) for being unhealthy: it starts over
    /// (its start period applies again; a failure is reported again), and its first success
    /// is recorded as a recovery. A probe already running is for the old generation: dropped.
    pub fn restarted(&self, service: &str, component: &str, id: &str) {
        let mut t = self.tracker(id, Instant::now());
        t.after_failure = true;
        self.lock().insert((service.to_string(), component.to_string()), t);
    }
}

/// One probe's result, sent back by its thread.
struct Done {
    key: (String, String),
    id: String,
    generation: u64,
    check: HealthCheck,
    restart: Option<String>,
    result: Result<(), String>,
}

/// How often the watch looks for instances to probe when none is due sooner.
const ROUND: Duration = Duration::from_secs(1);
/// How often a waiting watch checks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(250);

/// Probe what is due until `stop` says so (or its sender is gone). Each probe runs on a thread
/// of its own and one component has at most one probe out: a probe that hangs to its timeout
/// delays nothing else.
pub fn watch(agent: Arc<Agent>, monitor: Sender<Trigger>, stop: Receiver<()>) {
    let (tx, rx) = mpsc::channel::<Done>();
    let mut next_round = Instant::now();
    loop {
        if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
            return;
        }
        if Instant::now() >= next_round {
            next_round = start_due(&agent, &tx).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "health watch: cannot read the registry or the runtime; retrying");
                Instant::now() + 5 * ROUND
            });
        }
        let wait = next_round.saturating_duration_since(Instant::now()).min(STOP_POLL);
        if let Ok(done) = rx.recv_timeout(wait) {
            if let Some(due) = apply(&agent, &monitor, done) {
                next_round = next_round.min(due);
            }
        }
    }
}

/// Start a probe of every running, registered instance whose probe is due; returns when the
/// next round should look again.
fn start_due(agent: &Arc<Agent>, tx: &Sender<Done>) -> Result<Instant, crate::proto::RpcError> {
    let board = agent.health();
    let records = agent.reader().services()?;
    let observed = agent.observe(None)?;
    let now = Instant::now();
    let mut next = now + ROUND;
    let mut registered = BTreeSet::new();
    for record in &records {
        for want in record.components.iter().filter(|c| c.desired == Desired::Running) {
            let Some(check) = want.spec.health_check() else { continue };
            let key = (record.name.clone(), want.spec.name.clone());
            registered.insert(key.clone());
            let name = instance_name(&record.name, &want.spec.name);
            // Only what the registry holds: a deploy's fresh instance is its gate's to probe.
            let Some(o) = observed.iter().find(|o| o.name == name && o.managed && o.running() && o.runs_spec(&want.hash)) else { continue };
            let generation = {
                let mut trackers = board.lock();
                let t = trackers.entry(key.clone()).or_insert_with(|| board.tracker(&o.id, now));
                if t.id != o.id {
                    *t = board.tracker(&o.id, now);
                }
                if t.in_flight {
                    continue;
                }
                if t.next > now {
                    next = next.min(t.next);
                    continue;
                }
                t.in_flight = true;
                t.generation
            };
            let (agent, tx, id, restart) = (agent.clone(), tx.clone(), o.id.clone(), want.spec.restart.clone());
            let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
                let result = probe::run(&check, agent.runtime(), &id);
                let _ = tx.send(Done { key, id, generation, check, restart, result });
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a probe thread");
            }
        }
    }
    board.lock().retain(|k, _| registered.contains(k));
    Ok(next)
}

/// Take a probe's result (unless the instance was restarted or replaced meanwhile); returns
/// when that component's next probe is due.
fn apply(agent: &Agent, monitor: &Sender<Trigger>, mut done: Done) -> Option<Instant> {
    let result = std::mem::replace(&mut done.result, Ok(()));
    let (transition, due) = {
        let mut trackers = agent.health().lock();
        let t = trackers.get_mut(&done.key).filter(|t| t.generation == done.generation && t.id == done.id)?;
        t.in_flight = false;
        (t.observe(result, &done.check, Instant::now()), t.next)
    };
    if let Some(transition) = transition {
        report(agent, monitor, &done, transition);
    }
    Some(due)
}

fn report(agent: &Agent, monitor: &Sender<Trigger>, done: &Done, t: Transition) {
    let (service, component) = (done.key.0.as_str(), done.key.1.as_str());
    let name = instance_name(service, component);
    let (kind, message) = match &t {
        Transition::Failed(why) => ("health.failed", format!("{name} is unhealthy: {} probes in a row failed; last: {why}", done.check.retries)),
        Transition::Recovered => ("health.ok", format!("{name} is healthy again")),
    };
    tracing::info!(service, component, kind, "{message}");
    let event = NewEvent { service: service.into(), component: Some(component.into()), kind: kind.into(), message };
    if let Err(e) = agent.registry().record_events(&[event]) {
        tracing::warn!(error = %e, "cannot record a health event");
    }
    if matches!(t, Transition::Failed(_)) && RestartPolicy::parse(done.restart.as_deref()) != RestartPolicy::No {
        let _ = monitor.send(Trigger::Unhealthy { service: service.into(), component: component.into(), id: done.id.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Health;

    fn check(retries: u32, start_period: &str) -> HealthCheck {
        Health { tcp: Some("127.0.0.1:1".into()), interval: Some("1s".into()), retries: Some(retries), start_period: Some(start_period.into()), ..Default::default() }
            .check()
            .unwrap()
    }

    #[test]
    fn unhealthy_after_retries_failures_in_a_row_once_then_recovers() {
        let c = check(3, "0s");
        let t0 = Instant::now();
        let mut t = Tracker::new("id", t0);
        let fail = || Err::<(), _>("refused".to_string());
        assert_eq!(t.observe(fail(), &c, t0), None);
        assert_eq!(t.observe(Ok(()), &c, t0), None, "a success resets the count");
        assert_eq!(t.status, Status::Healthy);
        assert_eq!(t.observe(fail(), &c, t0), None);
        assert_eq!(t.observe(fail(), &c, t0), None);
        assert_eq!(t.observe(fail(), &c, t0), Some(Transition::Failed("refused".into())));
        assert_eq!((t.status, t.detail.as_deref()), (Status::Unhealthy, Some("refused")));
        assert_eq!(t.observe(fail(), &c, t0), None, "one event per transition");
        assert_eq!(t.observe(Ok(()), &c, t0), Some(Transition::Recovered));
        assert_eq!(t.next, t0 + Duration::from_secs(1));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let c = check(1, "10s");
        let t0 = Instant::now();
        let mut t = Tracker::new("id", t0);
        assert_eq!(t.observe(Err("not yet".into()), &c, t0 + Duration::from_secs(9)), None);
        assert_eq!(t.status, Status::Starting);
        assert!(matches!(t.observe(Err("down".into()), &c, t0 + Duration::from_secs(10)), Some(Transition::Failed(_))));
        // Once healthy, the start period is over.
        let mut t = Tracker::new("id", t0);
        t.observe(Ok(()), &c, t0);
        assert!(matches!(t.observe(Err("down".into()), &c, t0 + Duration::from_secs(1)), Some(Transition::Failed(_))));
    }

    #[test]
    fn the_board_shows_only_the_instance_it_probed() {
        let b = Board::default();
        b.healthy("s", "c", "id1", &check(1, "0s"));
        assert_eq!(b.view("s", "c", Some("id1")), Some((Status::Healthy, None)));
        assert_eq!(b.view("s", "c", Some("id2")), None);
        b.restarted("s", "c", "id1");
        assert_eq!(b.view("s", "c", None), Some((Status::Starting, None)));
        let mut t = b.lock().get(&("s".to_string(), "c".to_string())).cloned().unwrap();
        let now = Instant::now();
        assert_eq!(t.observe(Ok(()), &check(1, "0s"), now), Some(Transition::Recovered), "healthy after a restart for failing");
        assert_eq!(t.observe(Ok(()), &check(1, "0s"), now), None);
    }
}
