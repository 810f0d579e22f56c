//! `deploy_many` (`mcp sync`, `mcp deploy a b c`): every plan for this node in one request.
//! All are admitted first (an invalid plan, or one the node's policy refuses, is answered as
//! such and nothing of it runs). One listing of the runtime then tells which services need
//! nothing: they are answered "unchanged" without another runtime call or a registry write
//! (an unchanged sync is bookkeeping). The rest are deployed as `deploy` does each (locked,
//! gated, all-or-nothing), several at once ([`parallel`]); one service's failure does not undo
//! another's success.

use super::reconcile::{self, Action};
use super::{parallel, record_of, Agent, ProgressFn};
use crate::plan::{Plan, PullPolicy};
use crate::proto::{ApplyResult, Change, ChangeKind, DeployManyItem, RpcError};
use crate::registry::{ComponentRecord, Desired};
use crate::runtime::Observed;

impl Agent {
    pub fn deploy_many(&self, plans: &[Plan], progress: ProgressFn) -> Result<Vec<DeployManyItem>, RpcError> {
        let item = |plan: &Plan, r: Result<ApplyResult, RpcError>| match r {
            Ok(result) => DeployManyItem { service: plan.name.clone(), result: Some(result), error: None },
            Err(e) => DeployManyItem { service: plan.name.clone(), result: None, error: Some(e) },
        };
        let mut items: Vec<Option<DeployManyItem>> = plans.iter().map(|_| None).collect();
        let mut admitted = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            match self.admit(plan, None) {
                Ok(()) => admitted.push(i),
                Err(e) => items[i] = Some(item(plan, Err(e))),
            }
        }
        // Without a listing every service takes the full path (which lists on its own).
        let all = self.runtime.list_all().ok();
        let mut todo = Vec::new();
        for i in admitted {
            match all.as_deref().map(|all| self.unchanged(&plans[i], all)) {
                Some(Ok(Some(r))) => items[i] = Some(item(&plans[i], Ok(r))),
                Some(Err(e)) => items[i] = Some(item(&plans[i], Err(e))),
                Some(Ok(None)) | None => todo.push(i),
            }
        }
        let deployed = parallel::each(&todo, |i| plans[*i].name.clone(), |i, progress| self.deploy(&plans[*i], None, progress), progress);
        for (i, r) in todo.into_iter().zip(deployed) {
            items[i] = Some(item(&plans[i], r));
        }
        Ok(items.into_iter().flatten().collect())
    }

    /// What a deploy of `plan` would answer when it needs nothing done, judged from `all` (the
    /// batch's listing) under the service's lock; None when it needs something, or when this
    /// cannot be told without the full deploy (a pull = "always" tag to ask about, a replace
    /// an earlier agent left, something half-way, a busy service). A change after the listing
    /// is the monitor's, as it would be had this deploy run a moment earlier.
    fn unchanged(&self, plan: &Plan, all: &[Observed]) -> Result<Option<ApplyResult>, RpcError> {
        if plan.components.iter().any(|c| c.pull == Some(PullPolicy::Always)) {
            return Ok(None);
        }
        let Some(_lock) = self.try_lock(&plan.name)? else { return Ok(None) };
        let Some(prev) = self.registry().service(&plan.name)? else { return Ok(None) };
        let desired = Desired::from_active(plan.active);
        let mut wanted = Vec::with_capacity(plan.components.len());
        for c in &plan.components {
            let run = self.with_routes(&plan.name, c, false)?;
            wanted.push(ComponentRecord { hash: self.runtime.spec_hash(&run)?, spec: run, desired });
        }
        let record = record_of(plan, Some(&prev), wanted, None);
        if (&record.node, record.active, &record.components) != (&prev.node, prev.active, &prev.components) {
            return Ok(None);
        }
        let mut observed = crate::runtime::select(all, Some(&plan.name));
        if observed.iter().any(Observed::settling) || !reconcile::interrupted(&plan.name, &prev.components, &observed).is_empty() {
            return Ok(None);
        }
        reconcile::claim_adopted(&mut observed, &prev.components);
        let mut changes = Vec::new();
        for action in reconcile::reconcile(&plan.name, &record.components, &observed, None) {
            let Action::Keep { component } = action else { return Ok(None) };
            let spec = record.component(&component).map(|c| c.hash.clone());
            changes.push(Change { component, change: ChangeKind::Unchanged, spec });
        }
        Ok(Some(ApplyResult { service: plan.name.clone(), changes }))
    }
}
