//! `recover`: the node's services brought back as the registry holds them, from the registry
//! alone (no workstation, no definition files): what is missing is recreated, what exited is
//! started, whatever the restart policy (the operator asked, or the node lost its containers);
//! components desired stopped stay as they are, and images come from the node's cache unless
//! one is missing. Each service is one deploy of its own registered record (locked, gated,
//! rolled back on failure); one service's failure does not stop the others, except through
//! the boot order ([`boot`]): a required stage that does not come up stops the later ones.
//! Used by `mcp recover` and by the daemon when it starts. And a registry
//! made anew beside what mcp deployed before says so ([`Agent::note_strangers`]).

use std::time::Instant;

use super::{boot, note, parallel, Agent, ProgressFn};
use crate::plan::health::show_duration;
use crate::proto::{ChangeKind, RecoverResult, RecoveredService, RecoveredStage, RpcError, StageState};
use crate::registry::NewEvent;

impl Agent {
    /// The first look at the runtime of an agent whose registry was made just now says what
    /// mcp deployed here before ([`Agent::note_strangers`]); not at open: an invalid plan is
    /// refused before the runtime is touched at all.
    pub fn note_strangers_once(&self) {
        if self.fresh.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.note_strangers();
        }
    }

    /// A registry made just now beside what mcp deployed earlier (its registry lost, moved,
    /// or another state dir) must not start as if the node were empty without a word: each
    /// such service gets an event (alerted like any other) and a warning in the log.
    pub(super) fn note_strangers(&self) {
        let all = match self.runtime.list_all() {
            Ok(all) => all,
            Err(e) => return tracing::warn!(error = %e, "a new registry: cannot look for what mcp deployed before"),
        };
        let mut by_service: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for o in all.iter().filter(|o| o.managed && !o.service.is_empty()) {
            by_service.entry(&o.service).or_default().push(&o.name);
        }
        let events: Vec<NewEvent> = by_service
            .iter()
            .map(|(service, names)| {
                let message = format!(
                    "this node's registry was created just now, but mcp deployed {} of {service} here before (with a registry that is gone: \
                     lost, moved, or another state dir); `mcp adopt {service}` takes it over",
                    names.join(", ")
                );
                tracing::warn!(service, "{message}");
                NewEvent { service: service.to_string(), component: None, kind: "registry.fresh".into(), message }
            })
            .collect();
        if let Err(e) = self.registry().record_events(&events) {
            tracing::warn!(error = %e, "cannot record what a new registry found");
        }
    }

    /// Bring the node's services back as registered, stage by stage ([`boot`]): within a
    /// stage several services at once ([`parallel`]); a stage is up when every service of it came
    /// back within its timeout; a required stage that is not stops the stages after it.
    pub fn recover_node(&self, occasion: Occasion, progress: ProgressFn) -> Result<RecoverResult, RpcError> {
        let names: Vec<String> = self.registry().services()?.into_iter().map(|r| r.name).collect();
        let stages = boot::plan_stages(&self.boot, &names);
        let mut result = RecoverResult { stages: Vec::new(), services: Vec::new() };
        // Why the stages left are not run: a required one before them failed.
        let mut blocked: Option<String> = None;
        for (i, stage) in stages.iter().enumerate() {
            let at = format!("boot stage {} ({} of {}{})", stage.name, i + 1, stages.len(), if stage.required { ", required" } else { "" });
            let mut outcome = RecoveredStage {
                name: stage.name.clone(),
                required: stage.required,
                state: StageState::Blocked,
                message: blocked.clone(),
                services: stage.services.clone(),
                elapsed_ms: 0,
            };
            if let Some(why) = &blocked {
                note(&mut *progress, "", format!("{at}: not started: {why}"));
                self.stage_events(stage, "stage.blocked", &format!("{at} not started {}: {why}", occasion.when()));
                result.services.extend(stage.services.iter().map(|service| RecoveredService {
                    service: service.clone(),
                    stage: stage.name.clone(),
                    changes: Vec::new(),
                    error: Some(format!("not started: {why}")),
                }));
                result.stages.push(outcome);
                continue;
            }
            note(&mut *progress, "", format!("{at}: {}", stage.services.join(", ")));
            self.stage_events(stage, "stage.started", &format!("{at} started {}: {}", occasion.when(), stage.services.join(", ")));
            let started = Instant::now();
            let done = self.recover_services(stage, occasion, started + stage.timeout, progress);
            let elapsed = started.elapsed();
            let failed: Vec<String> = done.iter().filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.service))).collect();
            let why = match (failed.is_empty(), elapsed > stage.timeout) {
                (true, false) => None,
                (true, true) => Some(format!("it took {:.1}s, more than its timeout {}", elapsed.as_secs_f64(), show_duration(stage.timeout))),
                (false, _) => Some(failed.join("; ")),
            };
            let message = match &why {
                None => format!("{at} is up after {:.1}s", elapsed.as_secs_f64()),
                Some(why) if stage.required => format!("{at} did not come up, so the stages after it are not started: {why}"),
                Some(why) => format!("{at} did not come up (optional: going on): {why}"),
            };
            note(&mut *progress, "", message.clone());
            self.stage_events(stage, if why.is_some() { "stage.failed" } else { "stage.up" }, &message);
            if let (Some(why), true) = (&why, stage.required) {
                blocked = Some(format!("required boot stage {} did not come up ({why})", stage.name));
            }
            result.services.extend(done);
            outcome.state = if why.is_some() { StageState::Failed } else { StageState::Up };
            outcome.message = why;
            outcome.elapsed_ms = elapsed.as_millis() as u64;
            result.stages.push(outcome);
        }
        Ok(result)
    }

    /// The services of one stage, several at once ([`parallel`]); one not begun by
    /// `deadline` is not begun at all. In the stage's order.
    fn recover_services(&self, stage: &boot::Stage, occasion: Occasion, deadline: Instant, progress: ProgressFn) -> Vec<RecoveredService> {
        let work = |service: &String, progress: ProgressFn| {
            if Instant::now() >= deadline {
                let error = format!("not begun: the stage's timeout ({}) passed first", show_duration(stage.timeout));
                return Some(RecoveredService { service: service.clone(), stage: stage.name.clone(), changes: Vec::new(), error: Some(error) });
            }
            self.recover_service(service, &stage.name, occasion, progress)
        };
        parallel::each(&stage.services, |s| s.clone(), work, progress).into_iter().flatten().collect()
    }

    /// One service, under its lock, as the registry holds it now (None: removed meanwhile).
    fn recover_service(&self, service: &str, stage: &str, occasion: Occasion, progress: ProgressFn) -> Option<RecoveredService> {
        let outcome = (|| {
            let _lock = self.lock(service)?;
            // Read again under the lock: a request may have changed or removed it meanwhile.
            let Some(record) = self.registry().service(service)? else { return Ok(None) };
            self.apply(&record, Some(&record.components), None, false, progress).map(Some)
        })();
        let (changes, error) = match outcome {
            Ok(None) => return None,
            Ok(Some(r)) => (r.changes, None),
            Err(e) => {
                let e: RpcError = e;
                note(&mut *progress, "", format!("not recovered: {}", e.message));
                (Vec::new(), Some(e.message))
            }
        };
        let done: Vec<String> =
            changes.iter().filter(|c| c.change != ChangeKind::Unchanged).map(|c| format!("{} {}", c.change.as_str(), c.component)).collect();
        if !done.is_empty() {
            let message = format!("recovered {} as registered: {}", occasion.when(), done.join(", "));
            let event = NewEvent { service: service.to_string(), component: None, kind: "recovered".into(), message };
            if let Err(e) = self.registry().record_events(&[event]) {
                tracing::warn!(service, error = %e, "cannot record the recovery");
            }
        }
        Some(RecoveredService { service: service.to_string(), stage: stage.to_string(), changes, error })
    }

    /// A configured stage's progress, as an event of each of its services.
    fn stage_events(&self, stage: &boot::Stage, kind: &str, message: &str) {
        if !stage.configured {
            return;
        }
        tracing::info!(stage = %stage.name, kind, "{message}");
        let events: Vec<NewEvent> = stage
            .services
            .iter()
            .map(|service| NewEvent { service: service.clone(), component: None, kind: kind.into(), message: message.to_string() })
            .collect();
        if let Err(e) = self.registry().record_events(&events) {
            tracing::warn!(stage = %stage.name, error = %e, "cannot record the boot stage's events");
        }
    }
}

/// Why the node recovers: said in its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occasion {
    DaemonStart,
    Request,
}

impl Occasion {
    fn when(self) -> &'static str {
        match self {
            Occasion::DaemonStart => "at the daemon's start",
            Occasion::Request => "on `mcp recover`",
        }
    }
}
