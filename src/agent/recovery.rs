//! `recover`: the node's services brought back as the registry holds them, from the registry
//! alone (no workstation, no definition files): what is missing is recreated, what exited is
//! started, whatever the restart policy (the operator asked, or the node lost its containers);
//! components desired stopped stay as they are, and images come from the node's cache unless
//! one is missing. Each service is one deploy of its own registered record (locked, gated,
//! rolled back on failure); one service's failure does not stop the others. And a registry
//! made anew beside what mcp deployed before says so ([`Agent::note_strangers`]).

use super::{note, Agent, ProgressFn};
use crate::proto::{RecoverResult, RecoveredService, RpcError};
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

    pub fn recover_node(&self, progress: ProgressFn) -> Result<RecoverResult, RpcError> {
        let names: Vec<String> = self.registry().services()?.into_iter().map(|r| r.name).collect();
        let mut services = Vec::new();
        for service in names {
            let outcome = (|| {
                let _lock = self.lock(&service)?;
                // Read again under the lock: a request may have changed or removed it meanwhile.
                let Some(record) = self.registry().service(&service)? else { return Ok(None) };
                self.apply(&record, Some(&record.components), None, false, progress).map(Some)
            })();
            match outcome {
                Ok(None) => {}
                Ok(Some(r)) => services.push(RecoveredService { service, changes: r.changes, error: None }),
                Err(e) => {
                    let e: RpcError = e;
                    note(&mut *progress, "", format!("{service}: not recovered: {}", e.message));
                    services.push(RecoveredService { service, changes: Vec::new(), error: Some(e.message) });
                }
            }
        }
        Ok(RecoverResult { services })
    }
}
