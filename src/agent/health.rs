//! The daemon's health watch: probes every running component that has a health check, at its
//! interval, records `health.failed` / `health.ok` when it turns unhealthy or recovers, and asks
//! the monitor to apply the restart policy to an unhealthy one. What it last saw is on a board
//! `ps` and `status` read.
//!
//! [`Tracker::observe`] (the state machine) is pure; [`watch`] runs the probes.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
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
}

impl Tracker {
    pub fn new(id: &str, now: Instant) -> Tracker {
        Tracker { id: id.to_string(), status: Status::Starting, detail: None, since: now, failures: 0, next: now, after_failure: false }
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
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Tracker>> {
        self.trackers.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut t = Tracker::new(id, now);
        t.observe(Ok(()), check, now);
        self.lock().insert((service.to_string(), component.to_string()), t);
    }

    /// The instance was restarted for being unhealthy: it starts over (its start period
    /// applies again), and its first success is recorded as a recovery.
    pub fn restarted(&self, service: &str, component: &str, id: &str) {
        let mut t = Tracker::new(id, Instant::now());
        t.after_failure = true;
        self.lock().insert((service.to_string(), component.to_string()), t);
    }
}

/// Probe what is due, until `stop` says so (or its sender is gone). Runs on its own thread:
/// probes block for at most their timeout, one after the other.
pub fn watch(agent: Arc<Agent>, monitor: Sender<Trigger>, stop: Receiver<()>) {
    loop {
        let wait = match watch_once(&agent, &monitor) {
            Ok(next) => next.saturating_duration_since(Instant::now()),
            Err(e) => {
                tracing::warn!(error = %e, "health watch: cannot read the registry or the runtime; retrying");
                Duration::from_secs(5)
            }
        };
        match stop.recv_timeout(wait.max(Duration::from_millis(50))) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// One round: probe every component whose probe is due; returns when the next one is due.
fn watch_once(agent: &Agent, monitor: &Sender<Trigger>) -> Result<Instant, crate::proto::RpcError> {
    let board = agent.health();
    let records = agent.registry().services()?;
    let observed = agent.observe(None)?;
    let mut next = Instant::now() + Duration::from_secs(1);
    let mut watched = BTreeSet::new();
    for record in &records {
        for want in record.components.iter().filter(|c| c.desired == Desired::Running) {
            let Some(check) = want.spec.health_check() else { continue };
            let (service, component) = (record.name.as_str(), want.spec.name.as_str());
            let name = instance_name(service, component);
            let Some(o) = observed.iter().find(|o| o.name == name && o.managed && o.running()) else { continue };
            let key = (service.to_string(), component.to_string());
            watched.insert(key.clone());
            let due = {
                let mut trackers = board.lock();
                let t = trackers.entry(key.clone()).or_insert_with(|| Tracker::new(&o.id, Instant::now()));
                if t.id != o.id {
                    *t = Tracker::new(&o.id, Instant::now());
                }
                t.next
            };
            if due > Instant::now() {
                next = next.min(due);
                continue;
            }
            let result = probe::run(&check, agent.runtime(), &o.id);
            let (transition, due) = {
                let mut trackers = board.lock();
                let Some(t) = trackers.get_mut(&key).filter(|t| t.id == o.id) else { continue };
                (t.observe(result, &check, Instant::now()), t.next)
            };
            next = next.min(due);
            if let Some(transition) = transition {
                report(agent, monitor, service, component, &o.id, &check, want.spec.restart.as_deref(), transition);
            }
        }
    }
    board.lock().retain(|k, _| watched.contains(k));
    Ok(next)
}

#[allow(clippy::too_many_arguments)]
fn report(agent: &Agent, monitor: &Sender<Trigger>, service: &str, component: &str, id: &str, check: &HealthCheck, restart: Option<&str>, t: Transition) {
    let name = instance_name(service, component);
    let (kind, message) = match &t {
        Transition::Failed(why) => ("health.failed", format!("{name} is unhealthy: {} probes in a row failed; last: {why}", check.retries)),
        Transition::Recovered => ("health.ok", format!("{name} is healthy again")),
    };
    tracing::info!(service, component, kind, "{message}");
    let event = NewEvent { service: service.into(), component: Some(component.into()), kind: kind.into(), message };
    if let Err(e) = agent.registry().record_events(&[event]) {
        tracing::warn!(error = %e, "cannot record a health event");
    }
    if matches!(t, Transition::Failed(_)) && RestartPolicy::parse(restart) != RestartPolicy::No {
        let _ = monitor.send(Trigger::Unhealthy { service: service.into(), component: component.into(), id: id.into() });
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
