//! Alerts: the daemon runs a configured command for each matching event, with the event as
//! JSON on stdin and its key fields in environment variables. The command is an argv (no
//! shell), so nothing in an event (names, container output) can be interpreted as code. A
//! failing or hanging hook is logged and recorded as an `alert.failed` event (which is never
//! alerted on itself); it never stops the agent.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Agent;
use crate::proto::Event;
use crate::registry::NewEvent;
use crate::runtime::child::{stderr_of, wait_at_most};

/// `[alert]` in agent.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The hook: program and arguments, e.g. `["/usr/local/bin/page", "--team", "ops"]`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Event kinds to alert on; `drift` matches `drift` and `drift.*`
    /// (default: drift, repair, deploy_failed).
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    /// Seconds a hook may run before it is killed (default 10).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

pub const DEFAULT_KINDS: &[&str] = &["drift", "repair", "deploy_failed", "health"];
const FAILED: &str = "alert.failed";
/// The registry's note of the last event the hook was run for.
const ALERTED: &str = "alerted_upto";
/// How often the registry is looked at without a wake-up (events other processes wrote).
const RECHECK: Duration = Duration::from_secs(30);

/// Whether events of `kind` are alerted on.
pub fn matches(kinds: &[String], kind: &str) -> bool {
    !kind.starts_with("alert.")
        && kinds.iter().any(|k| kind == k || kind.strip_prefix(k.as_str()).is_some_and(|rest| rest.starts_with('.')))
}

/// The hook's environment for `event`.
pub fn env_for(event: &Event, host: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MCP_EVENT_ID", event.id.to_string()),
        ("MCP_EVENT_TIME", event.time.to_string()),
        ("MCP_EVENT_KIND", event.kind.clone()),
        ("MCP_SERVICE", event.service.clone()),
        ("MCP_COMPONENT", event.component.clone().unwrap_or_default()),
        ("MCP_MESSAGE", event.message.clone()),
        ("MCP_HOST", host.to_string()),
    ]
}

pub struct Alerter {
    config: AlertConfig,
    kinds: Vec<String>,
    host: String,
}

impl Alerter {
    /// None when no command is configured.
    pub fn new(config: &AlertConfig) -> Option<Alerter> {
        if config.command.is_empty() {
            return None;
        }
        let kinds = config.kinds.clone().unwrap_or_else(|| DEFAULT_KINDS.iter().map(|k| k.to_string()).collect());
        Some(Alerter { config: config.clone(), kinds, host: hostname() })
    }

    /// Start the hook thread; events sent to the returned sender are alerted on in order.
    pub fn start(self, agent: Arc<Agent>) -> (Sender<Event>, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || self.run(&agent, rx))
            .expect("spawning the alert thread");
        (tx, handle)
    }

    /// Alert on every matching event after the last one handled, reading them from the
    /// registry (whoever wrote them: this daemon, or an agent that ran while it did not); the
    /// registry's note of the last one handled survives a stop, even SIGKILL (an event whose
    /// hook was running then is alerted again). `wake` says something was written.
    fn run(&self, agent: &Agent, wake: Receiver<Event>) {
        let mut done = loop {
            match self.resume_point(agent) {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read where alerting stopped; trying again");
                    if matches!(wake.recv_timeout(RECHECK), Err(RecvTimeoutError::Disconnected)) {
                        return;
                    }
                }
            }
        };
        loop {
            loop {
                let batch = match agent.reader().events_after(done, 100) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the events to alert on; trying again");
                        break;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for event in batch {
                    done = event.id;
                    self.handle(agent, &event);
                }
            }
            match wake.recv_timeout(RECHECK) {
                Err(RecvTimeoutError::Disconnected) => return,
                _ => while wake.try_recv().is_ok() {},
            }
        }
    }

    /// Where the last run stopped; the first run starts at the newest event (no history is
    /// alerted on when a hook is first configured).
    fn resume_point(&self, agent: &Agent) -> Result<i64, crate::registry::RegistryError> {
        let mut registry = agent.registry();
        match registry.meta(ALERTED)? {
            Some(id) => Ok(id),
            None => {
                let now = registry.last_event_id()?;
                registry.set_meta(ALERTED, now)?;
                Ok(now)
            }
        }
    }

    fn handle(&self, agent: &Agent, event: &Event) {
        if !matches(&self.kinds, &event.kind) {
            return;
        }
        if let Err(why) = self.fire(event) {
            tracing::warn!(event = event.id, kind = %event.kind, error = %why, "alert hook failed");
            let failed = NewEvent {
                service: event.service.clone(),
                component: event.component.clone(),
                kind: FAILED.into(),
                message: format!("alert hook {:?} failed for event {} ({}): {why}", self.config.command[0], event.id, event.kind),
            };
            if let Err(e) = agent.registry().record_events(&[failed]) {
                tracing::warn!(error = %e, "cannot record the alert failure");
            }
        }
        if let Err(e) = agent.registry().set_meta(ALERTED, event.id) {
            tracing::warn!(error = %e, "cannot record how far alerting got; a restart may alert on this event again");
        }
    }

    /// Run the hook for one event; the error says what went wrong.
    fn fire(&self, event: &Event) -> Result<(), String> {
        let mut cmd = Command::new(&self.config.command[0]);
        // A hook dies with the daemon (its event is alerted again after the restart).
        crate::runtime::child::die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd
            .args(&self.config.command[1..])
            .envs(env_for(event, &self.host))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start it: {e}"))?;
        let json = serde_json::to_vec(event).expect("events serialize");
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its input is its own business.
            let _ = stdin.write_all(&json);
        }
        let timeout = Duration::from_secs(self.config.timeout_secs.unwrap_or(10));
        let status = match wait_at_most(&mut child, timeout) {
            Ok(Some(status)) => status,
            Ok(None) => return Err(format!("still running after {}s; killed", timeout.as_secs())),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        };
        if status.success() {
            return Ok(());
        }
        let stderr: String = stderr_of(&mut child).trim().chars().take(300).collect();
        Err(format!("{status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") }))
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_by_prefix_and_never_alert_on_alerts() {
        let kinds: Vec<String> = DEFAULT_KINDS.iter().map(|k| k.to_string()).collect();
        assert!(matches(&kinds, "drift.missing"));
        assert!(matches(&kinds, "repair"));
        assert!(matches(&kinds, "repair.failed"));
        assert!(matches(&kinds, "deploy_failed"));
        assert!(!matches(&kinds, "driftwood"));
        assert!(!matches(&kinds, "created"));
        assert!(!matches(&["alert".to_string()], "alert.failed"));
    }

    #[test]
    fn env_carries_the_key_fields() {
        let e = Event {
            id: 7,
            time: 1000,
            service: "s".into(),
            component: Some("web".into()),
            kind: "drift.missing".into(),
            message: "s-web: $(rm -rf /)".into(),
        };
        let env = env_for(&e, "h");
        assert!(env.contains(&("MCP_EVENT_KIND", "drift.missing".into())));
        assert!(env.contains(&("MCP_COMPONENT", "web".into())));
        // Passed as data, never through a shell.
        assert!(env.contains(&("MCP_MESSAGE", "s-web: $(rm -rf /)".into())));
    }
}
