//! The deploy's gate: every instance a deploy created (a new component or a replacement) must
//! prove itself before the deploy commits. With a health check it must answer healthy within
//! start_period + retries × interval; without one it must stay running for the runtime's
//! settle window. Either way it must not exit or be restarted meanwhile.

use std::time::{Duration, Instant};

use super::{probe, Agent, ExecError, ProgressFn};
use crate::plan::health::show_duration;
use crate::plan::{instance_name, HealthCheck};
use crate::proto::{ErrorCode, Progress, RpcError};
use crate::registry::ServiceRecord;

/// How often the gate looks (a probe can answer sooner than its interval: the gate is waiting
/// for the first success, not watching a running service).
const POLL: Duration = Duration::from_millis(250);
/// How often a state lookup is tried before its error counts.
const TRIES: u32 = 3;

struct Fresh<'a> {
    component: &'a str,
    id: &'a str,
    check: Option<HealthCheck>,
    healthy: bool,
    /// When to probe again: every poll, but a command probe (a `podman exec` each, whose
    /// command may outlive a timeout) at most once per interval.
    next_probe: Instant,
}

impl Agent {
    /// Wait until every fresh instance is up (see the module's doc); the error says which one
    /// did not, and why.
    pub(super) fn wait_up(&self, record: &ServiceRecord, fresh: &[(String, String)], progress: ProgressFn) -> Result<(), ExecError> {
        let service = record.name.as_str();
        let window = self.runtime.settle();
        let mut fresh: Vec<Fresh> = fresh
            .iter()
            .map(|(component, id)| Fresh {
                component,
                id,
                check: record.component(component).and_then(|c| c.spec.health_check()),
                healthy: false,
                next_probe: Instant::now(),
            })
            .collect();
        let unchecked = fresh.iter().filter(|f| f.check.is_none()).count();
        if unchecked == fresh.len() && window.is_zero() {
            return Ok(());
        }
        if unchecked > 0 && !window.is_zero() {
            progress(Progress { component: None, message: format!("checking that new instances stay up for {:.1}s", window.as_secs_f64()) });
        }
        for f in fresh.iter().filter(|f| f.check.is_some()) {
            let deadline = f.check.as_ref().map(HealthCheck::deadline).unwrap_or_default();
            let message = format!("waiting for {} to become healthy (at most {})", instance_name(service, f.component), show_duration(deadline));
            progress(Progress { component: Some(f.component.to_string()), message });
        }
        if unchecked == fresh.len() {
            // Nothing to probe: one look each once the window has passed (an exit or a
            // restart within it shows then); a look costs a runtime call, and a batch makes many.
            std::thread::sleep(window);
            for f in &fresh {
                self.still_running(service, f.component, f.id)?;
            }
            return Ok(());
        }
        let started = Instant::now();
        loop {
            let elapsed = started.elapsed();
            for f in fresh.iter_mut() {
                // Healthy ones too: one that crashes while others are still waited for fails the deploy.
                self.still_running(service, f.component, f.id)?;
                let Some(check) = f.check.as_ref().filter(|_| !f.healthy && Instant::now() >= f.next_probe) else { continue };
                if matches!(check.probe, crate::plan::Probe::Cmd(_)) {
                    f.next_probe = Instant::now() + check.interval.max(POLL);
                }
                match probe::run(check, self.runtime.as_ref(), f.id) {
                    Ok(()) => {
                        f.healthy = true;
                        self.health.healthy(service, f.component, f.id, check);
                        let message = format!("{} is healthy after {:.1}s", instance_name(service, f.component), started.elapsed().as_secs_f64());
                        progress(Progress { component: Some(f.component.to_string()), message });
                    }
                    Err(why) if elapsed >= check.deadline() => {
                        return Err(ExecError::Failed(RpcError::new(
                            ErrorCode::Runtime,
                            format!(
                                "new {} did not become healthy within {} (start_period + retries × interval); last probe: {why}",
                                instance_name(service, f.component),
                                show_duration(check.deadline())
                            ),
                        )));
                    }
                    Err(_) => {}
                }
            }
            let checked_done = fresh.iter().all(|f| f.check.is_none() || f.healthy);
            let window_done = unchecked == 0 || elapsed >= window;
            if checked_done && window_done {
                // Still up now, all of them, after the last probe (without probes, the look
                // at the top of this pass was that).
                if fresh.iter().any(|f| f.check.is_some()) {
                    for f in &fresh {
                        self.still_running(service, f.component, f.id)?;
                    }
                }
                return Ok(());
            }
            // Only the window left: the unchecked ones are looked at once more at its end (a
            // look costs a runtime call each; a node recovering fifty services makes many).
            let wait = if checked_done { window.saturating_sub(elapsed) } else { POLL };
            std::thread::sleep(wait);
        }
    }

    /// The state of `id`, which one transient runtime error does not decide: asked up to
    /// [`TRIES`] times, [`POLL`] apart (a call that hung is not asked again).
    pub(super) fn state_steady(&self, id: &str) -> Result<Option<crate::runtime::Observed>, crate::runtime::RuntimeError> {
        let mut tries = 1;
        loop {
            match self.runtime.state(id) {
                Err(e) if tries < TRIES && !matches!(e, crate::runtime::RuntimeError::Hung { .. }) => {
                    tracing::debug!(id, error = %e, "state lookup failed; asking again");
                    tries += 1;
                    std::thread::sleep(POLL);
                }
                other => return other,
            }
        }
    }

    /// A fresh instance that exited, vanished or was restarted by the runtime (a crash loop looks
    /// "running" between crashes) fails the deploy, with its last output.
    fn still_running(&self, service: &str, component: &str, id: &str) -> Result<(), ExecError> {
        let state = self.state_steady(id).map_err(ExecError::from)?;
        if state.as_ref().is_some_and(|s| s.running() && s.restarts == 0) {
            return Ok(());
        }
        let logs = self.runtime.tail_logs(id, 5);
        let state = match state {
            Some(s) if s.restarts > 0 => format!("{}, restarted {} times", s.state, s.restarts),
            Some(s) => s.state,
            None => "gone".into(),
        };
        let logs = if logs.is_empty() { String::new() } else { format!("; last output: {logs}") };
        Err(ExecError::Failed(RpcError::new(
            ErrorCode::Runtime,
            format!("new {} did not stay up (state {state}){logs}", instance_name(service, component)),
        )))
    }
}
