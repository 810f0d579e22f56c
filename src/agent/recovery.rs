//! `recover`: the node's services brought back as the registry holds them, from the registry
//! alone (no workstation, no definition files): what is missing is recreated, what exited is
//! started, whatever the restart policy (the operator asked, or the node lost its containers);
//! components desired stopped stay as they are, and images come from the node's cache unless
//! one is missing. Each service is one deploy of its own registered record (locked, gated,
//! rolled back on failure); one service's failure does not stop the others.

use super::{note, Agent, ProgressFn};
use crate::proto::{RecoverResult, RecoveredService, RpcError};

impl Agent {
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
