//! Taking a failed deploy's runtime steps back. Each step is undone from what the runtime
//! shows now, not from what the step reported (a rename can happen and still report a
//! failure), and the result is checked afterwards: what the error says was restored is what
//! the runtime then shows.

use super::{short, Agent};
use crate::runtime::{Observed, RuntimeError};

/// Passes over the undo steps before a rollback counts as failed, and the pause between them.
const PASSES: u32 = 3;
const PASS_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// What to undo if a later step fails.
pub(super) enum Undo {
    RemoveNew { id: String },
    RestoreOld { old_id: String, name: String, was_running: bool, new_id: Option<String> },
    Stop { id: String },
    Start { id: String },
}

/// What a failed deploy tells the user: why, and what the rollback left (`wrong`, from
/// [`Agent::rollback`]).
pub(super) fn failed_deploy(service: &str, cause: &str, wrong: &[String]) -> String {
    if wrong.is_empty() {
        format!("deploy of {service} failed: {cause}; the previous version was restored and is unchanged")
    } else {
        format!("deploy of {service} failed: {cause}; ROLLBACK ALSO FAILED, check `mcp status {service}`: {}", wrong.join("; "))
    }
}

impl Agent {
    /// Undo `undo` (last step first); returns what is not as it was before the deploy, after
    /// looking (empty: everything restored).
    pub(super) fn rollback(&self, undo: Vec<Undo>) -> Vec<String> {
        // Every step acts on what the runtime shows now, so a pass can be run again: a step
        // a transient error stopped gets [`PASSES`] chances before the rollback counts as failed.
        let mut wrong = Vec::new();
        for pass in 1..=PASSES {
            let reported = self.undo_pass(&undo);
            wrong = self.verify(&undo);
            if !reported.is_empty() {
                tracing::info!(pass, reported = %reported.join("; "), still_wrong = wrong.len(), "rollback: some steps reported errors");
            }
            if wrong.is_empty() {
                break;
            }
            if pass < PASSES {
                std::thread::sleep(PASS_PAUSE);
            }
        }
        wrong
    }

    /// One pass over the undo steps, last step first; returns the errors they reported.
    fn undo_pass(&self, undo: &[Undo]) -> Vec<String> {
        let mut reported = Vec::new();
        let mut check = |r: Result<(), RuntimeError>| {
            if let Err(e) = r {
                reported.push(e.to_string());
            }
        };
        for u in undo.iter().rev() {
            match u {
                Undo::RemoveNew { id } => check(self.remove_unless_gone(id)),
                Undo::RestoreOld { old_id, name, was_running, new_id } => {
                    if let Some(id) = new_id {
                        check(self.remove_unless_gone(id));
                    }
                    // A failed create may have left a container under the name.
                    if let Ok(Some(o)) = self.runtime.by_name(name) {
                        if o.id != *old_id {
                            check(self.runtime.remove(&o.id));
                        }
                    }
                    let now = self.runtime.state(old_id).ok().flatten();
                    if now.as_ref().is_none_or(|o| o.name != *name) {
                        check(self.runtime.rename(old_id, name));
                    }
                    if *was_running && !now.as_ref().is_some_and(Observed::running) {
                        check(self.runtime.start(old_id));
                    }
                }
                Undo::Stop { id } => check(self.runtime.stop(id)),
                Undo::Start { id } => check(self.runtime.start(id)),
            }
        }
        reported
    }

    /// Remove `id` unless the runtime shows it gone already (a pass run again).
    fn remove_unless_gone(&self, id: &str) -> Result<(), RuntimeError> {
        match self.runtime.state(id) {
            Ok(None) => Ok(()),
            _ => self.runtime.remove(id),
        }
    }

    /// What the runtime shows against what the undo steps meant to leave.
    fn verify(&self, undo: &[Undo]) -> Vec<String> {
        let state = |id: &str| self.runtime.state(id);
        let mut wrong = Vec::new();
        for u in undo {
            let problem = match u {
                Undo::RemoveNew { id } => match state(id) {
                    Ok(None) => None,
                    Ok(Some(o)) => Some(format!("the new {} ({}) is still there", o.name, short(id))),
                    Err(e) => Some(format!("cannot check {}: {e}", short(id))),
                },
                Undo::RestoreOld { old_id, name, was_running, new_id } => {
                    let gone = new_id.as_deref().map(state);
                    match (state(old_id), gone) {
                        (_, Some(Ok(Some(n)))) => Some(format!("the new {} ({}) is still there", n.name, short(&n.id))),
                        (Ok(Some(o)), _) if o.name != *name => Some(format!("the previous {name} is still named {}", o.name)),
                        (Ok(Some(o)), _) if *was_running && !o.running() => Some(format!("the previous {name} is not running ({})", o.state)),
                        (Ok(Some(_)), _) => None,
                        (Ok(None), _) => Some(format!("the previous {name} ({}) is gone", short(old_id))),
                        (Err(e), _) => Some(format!("cannot check the previous {name}: {e}")),
                    }
                }
                Undo::Stop { id } => match state(id) {
                    Ok(Some(o)) if o.running() => Some(format!("{} is still running", o.name)),
                    Ok(_) => None,
                    Err(e) => Some(format!("cannot check {}: {e}", short(id))),
                },
                Undo::Start { id } => match state(id) {
                    Ok(Some(o)) if !o.running() => Some(format!("{} is not running ({})", o.name, o.state)),
                    Ok(Some(_)) => None,
                    Ok(None) => Some(format!("{} is gone", short(id))),
                    Err(e) => Some(format!("cannot check {}: {e}", short(id))),
                },
            };
            wrong.extend(problem);
        }
        wrong
    }
}
