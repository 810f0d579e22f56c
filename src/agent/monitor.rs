//! The daemon's monitor: keeps services true. It follows the runtime's event stream (restarting
//! the follower when it dies) and sweeps everything periodically so missed events are caught;
//! each sweep compares the registry with what runs, records drift once per transition (the
//! last recorded drift lives in the registry, so an agent restart neither loses nor repeats
//! events) and repairs what the component's restart policy says to, with backoff.
//!
//! Decisions ([`transitions`], [`repair_for`], [`backoff`]) are pure; [`Monitor`] runs them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::status::{findings, DriftKind, Finding};
use super::Agent;
use crate::plan::instance_name;
use crate::registry::{now_ms, ComponentRecord, DriftRow, LateEvent, NewEvent};
use crate::runtime::{Observed, RuntimeEvent};

/// `[monitor]` in agent.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Seconds between full sweeps (default 30); events trigger sweeps in between.
    #[serde(default)]
    pub sweep_secs: Option<u64>,
}

/// `[events]` in agent.toml: how many events the registry keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// At most this many events (default 10000).
    #[serde(default)]
    pub max_count: Option<u64>,
    /// None older than this many days (default 90).
    #[serde(default)]
    pub max_age_days: Option<u64>,
}

pub const DEFAULT_SWEEP_SECS: u64 = 30;
pub const DEFAULT_MAX_EVENTS: u64 = 10_000;
pub const DEFAULT_MAX_AGE_DAYS: u64 = 90;
/// Events arriving together (one `podman kill` emits several) cause one sweep.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// A service being changed by a request is looked at again this soon.
const BUSY_RETRY: Duration = Duration::from_millis(500);
/// Events kept while the registry cannot be written (the oldest go first).
const MAX_UNRECORDED: usize = 1000;
/// A component that stayed up this long after its last repair starts a fresh backoff.
const STREAK_RESET: Duration = Duration::from_secs(60);
/// When something was half-way (stopping, being removed) at a sweep: the next look.
const SETTLING_RELOOK: Duration = Duration::from_secs(1);

/// What the runtime last showed, kept current by the event stream: `status` and `ps` are
/// answered from it without a runtime call while nothing changed. Any event, any change made
/// by the agent, and a dead event follower make it stale.
#[derive(Debug, Default)]
pub struct ObservedCache {
    generation: AtomicU64,
    /// Numbers listings in the order they started.
    started: AtomicU64,
    following: AtomicBool,
    snapshot: Mutex<Option<Snapshot>>,
}

/// A listing's place in time: the generation when it started, and its start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    generation: u64,
    order: u64,
}

#[derive(Debug)]
struct Snapshot {
    taken: Listing,
    at: Instant,
    all: Arc<Vec<Observed>>,
}

/// The oldest snapshot trusted: an event follower that is alive but silent (podman's event
/// stream stuck) must not keep `status` on an old picture for longer than this.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(5);

impl ObservedCache {
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the event follower runs (without it the cache is never trusted).
    pub fn set_following(&self, on: bool) {
        self.following.store(on, Ordering::SeqCst);
        self.invalidate();
    }

    /// Call before listing; pass to [`ObservedCache::store`].
    pub fn begin(&self) -> Listing {
        let generation = self.generation.load(Ordering::SeqCst);
        Listing { generation, order: self.started.fetch_add(1, Ordering::SeqCst) }
    }

    /// The snapshot, if nothing changed since it was taken and it is recent.
    pub fn current(&self) -> Option<Arc<Vec<Observed>>> {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Option<Arc<Vec<Observed>>> {
        if !self.following.load(Ordering::SeqCst) {
            return None;
        }
        let g = self.generation.load(Ordering::SeqCst);
        let snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        snap.as_ref().filter(|s| s.taken.generation == g && now.saturating_duration_since(s.at) < SNAPSHOT_MAX_AGE).map(|s| s.all.clone())
    }

    /// List everything now and keep it (trusted only if nothing changed meanwhile).
    pub fn refresh(&self, runtime: &dyn crate::runtime::Runtime) -> Result<Arc<Vec<Observed>>, crate::runtime::RuntimeError> {
        let taken = self.begin();
        Ok(self.store(taken, runtime.list_all()?))
    }

    /// Keep a listing unless one that started later is kept already: two listings running at
    /// once (a sweep and a request's cache miss) may finish in either order, and the runtime
    /// can change between their starts before its event arrives.
    pub fn store(&self, taken: Listing, all: Vec<Observed>) -> Arc<Vec<Observed>> {
        let all = Arc::new(all);
        let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if snap.as_ref().is_none_or(|s| s.taken.order < taken.order) {
            *snap = Some(Snapshot { taken, at: Instant::now(), all: all.clone() });
        }
        all
    }
}

/// What the registry should record after a sweep.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DriftChanges {
    pub upsert: Vec<DriftRow>,
    pub resolved: Vec<(String, String)>,
    pub events: Vec<NewEvent>,
}

impl DriftChanges {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.resolved.is_empty()
    }
}

/// Compare the drift last recorded (`old`) with what a sweep found (`new`), for the services
/// `in_scope` accepts: an event for every object whose drift starts, changes kind or ends;
/// nothing for drift that persists.
pub fn transitions(old: &[DriftRow], new: &[Finding], in_scope: &dyn Fn(&str) -> bool, now: i64) -> DriftChanges {
    let mut out = DriftChanges::default();
    for f in new.iter().filter(|f| in_scope(&f.service)) {
        let before = old.iter().find(|o| o.service == f.service && o.name == f.name);
        if before.is_some_and(|b| b.kind == f.drift.kind.as_str()) {
            continue;
        }
        out.upsert.push(DriftRow {
            service: f.service.clone(),
            name: f.name.clone(),
            component: f.component.clone(),
            kind: f.drift.kind.as_str().to_string(),
            detail: f.drift.detail.clone(),
            since: now,
        });
        out.events.push(NewEvent {
            service: f.service.clone(),
            component: Some(f.component.clone()),
            kind: format!("drift.{}", f.drift.kind.as_str()),
            message: format!("{}: {}", f.name, f.drift.detail),
        });
    }
    for o in old.iter().filter(|o| in_scope(&o.service)) {
        if !new.iter().any(|f| f.service == o.service && f.name == o.name) {
            out.resolved.push((o.service.clone(), o.name.clone()));
            out.events.push(NewEvent {
                service: o.service.clone(),
                component: Some(o.component.clone()),
                kind: "drift.resolved".into(),
                message: format!("{} is as desired again (was: {})", o.name, o.detail),
            });
        }
    }
    out
}

/// A component's `restart` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    /// Bring it back when it exited non-zero or disappeared; at most `max` times in a row.
    OnFailure { max: Option<u32> },
    Always,
    /// Like always: stopping a service is done with `mcp stop`, which makes it desired stopped.
    UnlessStopped,
}

impl RestartPolicy {
    /// The plan's value (validated before it was stored); unset is `no`, as for podman.
    pub fn parse(restart: Option<&str>) -> RestartPolicy {
        match restart.unwrap_or("no") {
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            r if r.starts_with("on-failure") => {
                RestartPolicy::OnFailure { max: r.strip_prefix("on-failure:").and_then(|n| n.parse().ok()) }
            }
            _ => RestartPolicy::No,
        }
    }
}

/// How to bring a component back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// It is gone: create it again from the registry's spec.
    Recreate,
    /// It is there but stopped: start it.
    Start { id: String },
    /// It runs but is unhealthy: restart it.
    Restart { id: String },
}

/// Whether the component's restart policy asks for a repair of this drift. (What the node
/// lost while no daemon ran is recovered whatever the policy when the daemon starts: see
/// [`Agent::recover_node`].)
pub fn repair_for(f: &Finding, want: &ComponentRecord) -> Option<Repair> {
    let policy = RestartPolicy::parse(want.spec.restart.as_deref());
    if !f.registered || policy == RestartPolicy::No {
        return None;
    }
    match f.drift.kind {
        DriftKind::Missing => Some(Repair::Recreate),
        DriftKind::Stopped => {
            let o = f.observed.as_ref()?;
            // Paused or half-removed objects are left to the operator.
            if !["exited", "stopped", "created", "configured"].contains(&o.state.as_str()) {
                return None;
            }
            let clean_exit = o.exit_code == Some(0);
            match policy {
                RestartPolicy::OnFailure { .. } if clean_exit => None,
                _ => Some(Repair::Start { id: o.id.clone() }),
            }
        }
        _ => None,
    }
}

/// Delay before repair number `attempt + 1` of a streak: 0, 1, 2, 4, ... 60 seconds.
pub fn backoff(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(6)).min(Duration::from_secs(60)),
    }
}

/// Repairs of one component in a row.
#[derive(Debug)]
struct Streak {
    attempts: u32,
    last: Instant,
    gave_up: bool,
}

/// Why the monitor wakes up.
#[derive(Debug)]
pub enum Trigger {
    /// The runtime reported a change.
    Changed(RuntimeEvent),
    /// Look at everything now (e.g. the event follower just (re)started).
    Sweep,
    /// The health watch found this instance unhealthy and its restart policy asks for a repair.
    Unhealthy { service: String, component: String, id: String },
    Stop,
}

pub struct Monitor {
    agent: Arc<Agent>,
    cache: Arc<ObservedCache>,
    interval: Duration,
    retention: (u64, i64),
    streaks: HashMap<(String, String), Streak>,
    /// When something deferred (backoff, a busy service) wants another look.
    wake_at: Option<Instant>,
    /// Unhealthy instances whose restart waits (backoff, a busy service).
    unhealthy: Vec<(String, String, String)>,
    /// Events of repairs done while the registry could not be written.
    unrecorded: Vec<LateEvent>,
    /// Record drift, repair nothing (the daemon's first look, before it recovers).
    record_only: bool,
}

impl Monitor {
    pub fn new(agent: Arc<Agent>, cache: Arc<ObservedCache>, config: &MonitorConfig, retention: &RetentionConfig) -> Self {
        let days = retention.max_age_days.unwrap_or(DEFAULT_MAX_AGE_DAYS) as i64;
        Monitor {
            agent,
            cache,
            interval: Duration::from_secs(config.sweep_secs.unwrap_or(DEFAULT_SWEEP_SECS).max(1)),
            retention: (retention.max_count.unwrap_or(DEFAULT_MAX_EVENTS), days * 86_400_000),
            streaks: HashMap::new(),
            wake_at: None,
            unhealthy: Vec::new(),
            unrecorded: Vec::new(),
            record_only: false,
        }
    }

    /// With `booted` (the daemon's start): first recover what the node lost while no daemon
    /// ran, in boot order ([`Agent::recover_node`]), and say so to `booted`. Then sweep now,
    /// and whenever triggered, a deferred repair is due, or the interval passed; returns on
    /// [`Trigger::Stop`] or when every sender is gone.
    pub fn run(mut self, rx: Receiver<Trigger>, booted: Option<std::sync::mpsc::Sender<()>>) {
        if let Some(booted) = booted {
            self.recover_at_start();
            let _ = booted.send(());
        }
        if let Err(e) = self.sweep() {
            tracing::warn!(error = %e, "the first look failed; the next sweep tries again");
        }
        let mut next_sweep = Instant::now() + self.interval;
        loop {
            let wake = self.wake_at.map_or(next_sweep, |w| w.min(next_sweep));
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(first) => {
                    self.note(first);
                    // Let the rest of a burst arrive, then look once.
                    let until = Instant::now() + DEBOUNCE;
                    loop {
                        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Ok(t) => self.note(t),
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.wake_at = None;
            if let Err(e) = self.sweep() {
                tracing::warn!(error = %e, "monitor sweep failed; retrying at the next one");
            }
            for (service, component, id) in std::mem::take(&mut self.unhealthy) {
                match self.restart_unhealthy(&service, &component, &id) {
                    Ok(true) => {}
                    Ok(false) => self.unhealthy.push((service, component, id)),
                    Err(e) => {
                        tracing::warn!(service, component, error = %e, "cannot restart an unhealthy component yet");
                        self.defer(Instant::now() + BUSY_RETRY);
                        self.unhealthy.push((service, component, id));
                    }
                }
            }
            next_sweep = Instant::now() + self.interval;
        }
    }

    /// What the node lost while no daemon ran (a reboot, a lost podman database) comes back
    /// as registered, whatever the restart policies, in boot order; said in the log and events.
    fn recover_at_start(&mut self) {
        self.agent.report_unrecorded_repairs();
        // What the node lost is recorded first, as drift, so its history says what was found.
        self.record_only = true;
        if let Err(e) = self.sweep() {
            tracing::warn!(error = %e, "the first look failed; recovering anyway");
        }
        self.record_only = false;
        let mut log = |p: crate::proto::Progress| tracing::info!("recovery: {}", p.message);
        match self.agent.recover_node(super::Occasion::DaemonStart, &mut log) {
            Ok(r) => {
                let failed = r.services.iter().filter(|s| s.error.is_some()).count();
                if failed > 0 {
                    tracing::warn!(failed, "recovery at the daemon's start left services down; the restart policies take over");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot recover at the daemon's start"),
        }
        self.cache.invalidate();
    }

    fn note(&mut self, trigger: Trigger) {
        if let Trigger::Unhealthy { service, component, id } = trigger {
            if !self.unhealthy.iter().any(|u| u.2 == id) {
                self.unhealthy.push((service, component, id));
            }
        }
    }

    /// Restart an unhealthy instance as its restart policy says, under the service's lock;
    /// false when it has to wait (a request changes the service, or backoff).
    fn restart_unhealthy(&mut self, service: &str, component: &str, id: &str) -> Result<bool, crate::proto::RpcError> {
        let Some(_lock) = self.agent.try_lock(service)? else {
            self.defer(Instant::now() + BUSY_RETRY);
            return Ok(false);
        };
        let Some(record) = self.agent.registry().service(service)? else { return Ok(true) };
        let Some(want) = record.component(component) else { return Ok(true) };
        // Recovered during a backoff: nothing to do.
        if !self.agent.health().is_unhealthy(service, component, id) {
            return Ok(true);
        }
        // Replaced or stopped meanwhile: that instance is not the component any more.
        let current = self.agent.runtime().state(id)?;
        if !current.is_some_and(|o| o.running() && o.name == instance_name(service, component)) {
            return Ok(true);
        }
        Ok(self.repair(service, want, Repair::Restart { id: id.to_string() }))
    }

    /// One look at everything: record drift transitions, repair, prune old events.
    pub fn sweep(&mut self) -> Result<(), crate::proto::RpcError> {
        self.flush_unrecorded();
        self.agent.note_strangers_once();
        let all = self.cache.refresh(self.agent.runtime())?;
        if all.iter().any(|o| o.settling()) {
            // Not drift yet (see status::drift): looked at again once it got where it goes.
            self.defer(Instant::now() + SETTLING_RELOOK);
        }
        let records = self.agent.registry().services()?;
        let found = findings(&records, &all);
        let old = self.agent.registry().drift()?;
        let now = now_ms();
        let registered: BTreeSet<&str> = records.iter().map(|r| r.name.as_str()).collect();

        // Objects of services the registry does not know: nothing to lock or repair.
        let foreign = transitions(&old, &found, &|s| !registered.contains(s), now);
        if !foreign.is_empty() {
            if let Err(e) = self.agent.registry().record_drift(&foreign.upsert, &foreign.resolved, &foreign.events) {
                // Not written: the next sweep sees the same transition and tries again.
                tracing::warn!(error = %e, "cannot record drift; trying again at the next sweep");
            }
        }
        // Registered services that changed or need a repair get a fresh look under their lock.
        let changed = transitions(&old, &found, &|s| registered.contains(s), now);
        let mut visit: BTreeSet<String> = changed.upsert.iter().map(|d| d.service.clone()).collect();
        visit.extend(changed.resolved.iter().map(|(s, _)| s.clone()));
        for f in &found {
            let want = records.iter().find(|r| r.name == f.service).and_then(|r| r.component(&f.component));
            if want.is_some_and(|w| repair_for(f, w).is_some()) {
                visit.insert(f.service.clone());
            }
        }
        for service in visit {
            // One service's trouble (a hung call, a locked registry) does not stop the others.
            if let Err(e) = self.visit(&service) {
                tracing::warn!(service, error = %e, "cannot look at the service; trying again at the next sweep");
            }
        }
        let (max_count, max_age) = self.retention;
        match self.agent.registry().prune_events(max_count, max_age) {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "old events pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old events"),
        }
        Ok(())
    }

    /// Check one service under its lock: a request changing it right now wins, and the
    /// service is looked at again shortly.
    fn visit(&mut self, service: &str) -> Result<(), crate::proto::RpcError> {
        let Some(_lock) = self.agent.try_lock(service)? else {
            self.defer(Instant::now() + BUSY_RETRY);
            return Ok(());
        };
        let Some(record) = self.agent.registry().service(service)? else { return Ok(()) };
        let mut observed = self.agent.runtime().list(Some(service))?;
        // A replace an earlier agent was killed in is finished or undone first: it is not drift.
        if self.agent.recover(service, &record.components, &observed, &mut |_| {})? {
            observed = self.agent.runtime().list(Some(service))?;
        }
        // This look may see more than the sweep's listing (the runtime's event for it can still
        // be on its way): the cache must not answer `status` with less than is recorded below.
        self.cache.invalidate();
        let found = findings(std::slice::from_ref(&record), &observed);
        let old = self.agent.registry().drift()?;
        let changes = transitions(&old, &found, &|s| s == service, now_ms());
        if !changes.is_empty() {
            // Repairs come first: a registry that cannot be written (full disk, locked) must
            // not keep a component down. The drift is recorded at a later look.
            if let Err(e) = self.agent.registry().record_drift(&changes.upsert, &changes.resolved, &changes.events) {
                tracing::warn!(service, error = %e, "cannot record drift; repairing anyway");
            }
        }
        let repairing = !self.record_only;
        for f in found.iter().filter(|_| repairing) {
            let Some(want) = record.component(&f.component) else { continue };
            if let Some(repair) = repair_for(f, want) {
                let _ = self.repair(service, want, repair);
            }
        }
        Ok(())
    }

    fn defer(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Carry out a repair unless backoff says to wait (false) or the policy allows no more.
    fn repair(&mut self, service: &str, want: &ComponentRecord, repair: Repair) -> bool {
        let component = want.spec.name.clone();
        let name = instance_name(service, &component);
        let policy = want.spec.restart.clone().unwrap_or_else(|| "no".into());
        let streak = self
            .streaks
            .entry((service.to_string(), component.clone()))
            .or_insert(Streak { attempts: 0, last: Instant::now(), gave_up: false });
        if streak.attempts > 0 && streak.last.elapsed() > STREAK_RESET + backoff(streak.attempts) {
            *streak = Streak { attempts: 0, last: Instant::now(), gave_up: false };
        }
        if let RestartPolicy::OnFailure { max: Some(max) } = RestartPolicy::parse(Some(&policy)) {
            if streak.attempts >= max {
                if !streak.gave_up {
                    streak.gave_up = true;
                    let event = NewEvent {
                        service: service.into(),
                        component: Some(component),
                        kind: "repair.gave_up".into(),
                        message: format!("{name}: restart policy {policy} allows no more repairs ({max} in a row)"),
                    };
                    if let Err(e) = self.agent.registry().record_events(&[event]) {
                        tracing::warn!(error = %e, "cannot record event");
                    }
                }
                return true;
            }
        }
        let due = streak.last + backoff(streak.attempts);
        if streak.attempts > 0 && Instant::now() < due {
            self.defer(due);
            return false;
        }
        streak.attempts += 1;
        streak.last = Instant::now();
        let attempt = streak.attempts;
        let what = match &repair {
            Repair::Recreate => "recreated",
            Repair::Start { .. } => "restarted",
            Repair::Restart { .. } => "restarted unhealthy",
        };
        // Written ahead: a daemon that dies before the record below is found out by the next.
        self.agent.intend_repair(service, &component, what);
        let result = match &repair {
            Repair::Recreate => self.agent.create_instance(service, want).map(|_| ()),
            Repair::Start { id } => self.agent.runtime().start(id),
            Repair::Restart { id } => {
                let done = self.agent.runtime().restart(id);
                // Probed afresh either way: a restart that failed is reported (and retried) again.
                self.agent.health().restarted(service, &component, id);
                done
            }
        };
        self.cache.invalidate();
        // When it happened: a registry that cannot take the event now may take seconds to say so.
        let at = now_ms();
        let recorded = match result {
            Ok(()) => {
                tracing::info!(service, component = %component, what, attempt, "repaired");
                let message = format!("{what} {name} (restart policy {policy}, repair {attempt} in a row)");
                let event = NewEvent { service: service.into(), component: Some(component.clone()), kind: "repair".into(), message };
                self.agent.registry().record_repair(service, &component, &event).map_err(|e| (e, event, true))
            }
            Err(e) => {
                tracing::warn!(service, component = %component, error = %e, "repair failed");
                let message = format!("could not bring back {name} (restart policy {policy}, try {attempt}): {e}");
                let event = NewEvent { service: service.into(), component: Some(component.clone()), kind: "repair.failed".into(), message };
                let recorded = self.agent.registry().record_events(std::slice::from_ref(&event));
                if recorded.is_ok() {
                    self.agent.finish_repair(service, &component);
                }
                recorded.map_err(|e| (e, event, false))
            }
        };
        if let Err((e, event, repair)) = recorded {
            tracing::warn!(error = %e, "cannot record the repair yet; kept until the registry can be written");
            self.keep_unrecorded(LateEvent { event, time: at, repair });
        }
        true
    }

    /// An event the registry could not take: written at the next sweep that can, with the
    /// time it happened (and a repair counted).
    fn keep_unrecorded(&mut self, event: LateEvent) {
        if self.unrecorded.len() >= MAX_UNRECORDED {
            self.unrecorded.remove(0);
        }
        self.unrecorded.push(event);
    }

    fn flush_unrecorded(&mut self) {
        if self.unrecorded.is_empty() {
            return;
        }
        match self.agent.registry().record_late(&self.unrecorded) {
            Ok(()) => self.unrecorded.clear(),
            Err(e) => tracing::warn!(error = %e, kept = self.unrecorded.len(), "the registry still cannot take events"),
        }
    }
}

/// Where the follower leaves the running stream's stopper, for shutdown.
pub type StopSlot = Arc<Mutex<Option<crate::runtime::Stopper>>>;

/// Follow the runtime's events and feed them to the monitor; when the stream dies, say so and
/// start it again (with backoff if it keeps dying). `current` holds the running stream's
/// stopper; returns when `stop` is set or the monitor is gone.
pub fn follow(agent: Arc<Agent>, cache: Arc<ObservedCache>, tx: Sender<Trigger>, current: StopSlot, stop: Arc<AtomicBool>) {
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        match agent.runtime().watch() {
            Ok(mut stream) => {
                *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream.stopper());
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                cache.set_following(true);
                // Whatever happened while nobody listened.
                if tx.send(Trigger::Sweep).is_err() {
                    return;
                }
                for event in &mut stream {
                    cache.invalidate();
                    if tx.send(Trigger::Changed(event)).is_err() {
                        return;
                    }
                }
                cache.set_following(false);
                current.lock().unwrap_or_else(|p| p.into_inner()).take();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!("the runtime's event stream ended; starting it again");
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow the runtime's events; retrying"),
        }
        failures = if started.elapsed() > Duration::from_secs(10) { 0 } else { failures + 1 };
        // A retry delay, not synchronization: a stream that keeps dying is not restarted in a
        // tight loop.
        std::thread::sleep(backoff(failures).max(Duration::from_millis(100)));
        let _ = tx.send(Trigger::Sweep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::Drift;
    use crate::plan::Component;
    use crate::registry::Desired;

    fn finding(service: &str, name: &str, kind: DriftKind) -> Finding {
        Finding {
            service: service.into(),
            component: name.rsplit('-').next().unwrap().into(),
            name: name.into(),
            drift: Drift { kind, detail: format!("{} detail", kind.as_str()) },
            observed: None,
            registered: true,
        }
    }

    fn row(service: &str, name: &str, kind: &str) -> DriftRow {
        DriftRow {
            service: service.into(),
            name: name.into(),
            component: name.rsplit('-').next().unwrap().into(),
            kind: kind.into(),
            detail: "d".into(),
            since: 1,
        }
    }

    #[test]
    fn one_event_per_transition() {
        let all = |_: &str| true;
        // New drift: one event and a row.
        let c = transitions(&[], &[finding("s", "s-a", DriftKind::Stopped)], &all, 5);
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.events[0].kind, "drift.stopped");
        assert_eq!(c.upsert[0].since, 5);
        // The same drift at the next sweep: nothing.
        assert!(transitions(&[row("s", "s-a", "stopped")], &[finding("s", "s-a", DriftKind::Stopped)], &all, 6).is_empty());
        // Kind changes: one event.
        let c = transitions(&[row("s", "s-a", "stopped")], &[finding("s", "s-a", DriftKind::Missing)], &all, 7);
        assert_eq!(c.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["drift.missing"]);
        // Gone: resolved.
        let c = transitions(&[row("s", "s-a", "missing")], &[], &all, 8);
        assert_eq!(c.resolved, vec![("s".to_string(), "s-a".to_string())]);
        assert_eq!(c.events[0].kind, "drift.resolved");
        // Out of scope: untouched.
        assert!(transitions(&[row("t", "t-a", "missing")], &[], &|s| s == "s", 9).is_empty());
    }

    fn want(restart: Option<&str>) -> ComponentRecord {
        let spec = Component { name: "a".into(), image: "i".into(), restart: restart.map(str::to_string), ..Default::default() };
        ComponentRecord::new(spec, Desired::Running)
    }

    fn stopped(code: i32, state: &str) -> Finding {
        let mut f = finding("s", "s-a", DriftKind::Stopped);
        f.observed = Some(Observed { id: "id1".into(), state: state.into(), exit_code: Some(code), ..Default::default() });
        f
    }

    #[test]
    fn restart_policies() {
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::No);
        assert_eq!(RestartPolicy::parse(Some("on-failure:3")), RestartPolicy::OnFailure { max: Some(3) });
        assert_eq!(RestartPolicy::parse(Some("on-failure")), RestartPolicy::OnFailure { max: None });
        let missing = finding("s", "s-a", DriftKind::Missing);
        assert_eq!(repair_for(&missing, &want(None)), None);
        assert_eq!(repair_for(&missing, &want(Some("always"))), Some(Repair::Recreate));
        assert_eq!(repair_for(&missing, &want(Some("on-failure"))), Some(Repair::Recreate));
        let start = Some(Repair::Start { id: "id1".into() });
        assert_eq!(repair_for(&stopped(137, "exited"), &want(Some("unless-stopped"))), start);
        assert_eq!(repair_for(&stopped(0, "exited"), &want(Some("always"))), start);
        assert_eq!(repair_for(&stopped(0, "exited"), &want(Some("on-failure"))), None);
        assert_eq!(repair_for(&stopped(1, "exited"), &want(Some("on-failure"))), start);
        assert_eq!(repair_for(&stopped(1, "paused"), &want(Some("always"))), None);
        assert_eq!(repair_for(&finding("s", "s-a", DriftKind::Spec), &want(Some("always"))), None);
        let mut orphan = finding("s", "s-a", DriftKind::Missing);
        orphan.registered = false;
        assert_eq!(repair_for(&orphan, &want(Some("always"))), None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn cache_is_trusted_only_while_following_and_unchanged() {
        let c = ObservedCache::default();
        c.store(c.begin(), vec![Observed::default()]);
        assert!(c.current().is_none(), "not following: never trusted");
        c.set_following(true);
        c.store(c.begin(), vec![]);
        assert!(c.current().is_some());
        c.invalidate();
        assert!(c.current().is_none());
        // A listing that started before a change is not trusted either.
        let taken = c.begin();
        c.invalidate();
        c.store(taken, vec![]);
        assert!(c.current().is_none());
        // A follower alive but silent: an old snapshot is not trusted however quiet it was.
        c.store(c.begin(), vec![]);
        assert!(c.current().is_some());
        assert!(c.current_at(Instant::now() + SNAPSHOT_MAX_AGE).is_none(), "too old");
    }

    #[test]
    fn a_listing_that_started_earlier_never_replaces_a_later_one() {
        let c = ObservedCache::default();
        c.set_following(true);
        let early = c.begin();
        let late = c.begin();
        c.store(late, vec![Observed { name: "new".into(), ..Default::default() }]);
        // The early listing finishes last (it may not have seen what the late one saw).
        c.store(early, vec![]);
        assert_eq!(c.current().unwrap().len(), 1);
    }
}
