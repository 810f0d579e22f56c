//! What a deploy would do, without doing it (`mcp plan`): the same admission checks, hashes
//! and reconcile as a deploy, then per component the action and, for a replace, the fields
//! that differ (environment values masked). Reads only: no lock, no recovery, no pull (a
//! `pull = "always"` tag is asked of its registry, not pulled).

use super::reconcile::{self, Action};
use super::{component_names, record_of, Agent};
use crate::plan::{validate, Component, Plan, PullPolicy};
use crate::proto::{ErrorCode, FieldDiff, PlanManyItem, PlanResult, PlannedChange, RpcError};
use crate::registry::{ComponentRecord, Desired};

impl Agent {
    /// Refuse what a deploy would refuse before it touches anything: an invalid plan, one
    /// the node's policy does not allow, an unknown component scope.
    pub(super) fn admit(&self, plan: &Plan, only: Option<&str>) -> Result<(), RpcError> {
        if let Err(errors) = validate(plan, "plan") {
            return Err(RpcError { code: ErrorCode::InvalidPlan, message: errors.to_string(), fields: errors.errors });
        }
        let refused = self.policy.check(plan);
        if !refused.is_empty() {
            return Err(refused_by_policy(refused));
        }
        if let Some(c) = only {
            if plan.component(c).is_none() {
                return Err(RpcError::new(
                    ErrorCode::NotFound,
                    format!("service {} has no component {c:?}; components: {}", plan.name, component_names(plan)),
                ));
            }
        }
        Ok(())
    }

    pub fn preview(&self, plan: &Plan, only: Option<&str>) -> Result<PlanResult, RpcError> {
        self.preview_in(plan, only, None)
    }

    /// Several services at once (`sync --plan`): one listing of the node for all of them.
    pub fn preview_many(&self, plans: &[Plan]) -> Result<Vec<PlanManyItem>, RpcError> {
        let all = self.runtime.list_all()?;
        Ok(plans
            .iter()
            .map(|p| match self.preview_in(p, None, Some(&all)) {
                Ok(r) => PlanManyItem { service: p.name.clone(), result: Some(r), error: None },
                Err(e) => PlanManyItem { service: p.name.clone(), result: None, error: Some(e) },
            })
            .collect())
    }

    fn preview_in(&self, plan: &Plan, only: Option<&str>, all: Option<&[crate::runtime::Observed]>) -> Result<PlanResult, RpcError> {
        self.admit(plan, only)?;
        let service = plan.name.as_str();
        let prev = self.registry().service(service)?;
        let desired = Desired::from_active(plan.active);
        let mut wanted = Vec::new();
        for c in plan.components.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
            let run = self.with_routes(service, c, false)?;
            wanted.push(ComponentRecord { hash: self.runtime.spec_hash(&run)?, spec: run, desired });
        }
        let record = record_of(plan, prev.as_ref(), wanted, only);
        let mut observed = match all {
            Some(all) => crate::runtime::select(all, Some(service)),
            None => self.runtime.list(Some(service))?,
        };
        if let Some(p) = &prev {
            reconcile::claim_adopted(&mut observed, &p.components);
        }
        let registered = |name: &str| prev.as_ref().and_then(|p| p.component(name)).map(|c| &c.spec);
        let mut changes = Vec::new();
        for action in reconcile::reconcile(service, &record.components, &observed, only) {
            let component = action.component().to_string();
            let new = record.component(&component).map(|c| &c.spec);
            let (what, diff, reason) = match &action {
                Action::Create { .. } => ("create", Vec::new(), None),
                Action::Replace { .. } => {
                    let diff = match (registered(&component), new) {
                        (Some(old), Some(new)) => spec_diff(old, new),
                        _ => Vec::new(),
                    };
                    let reason = diff.is_empty().then(|| "what runs differs from the definition (changed outside mcp, or baked files changed)".to_string());
                    ("replace", diff, reason)
                }
                Action::Start { .. } => ("start", Vec::new(), None),
                Action::Stop { .. } => ("stop", Vec::new(), None),
                Action::Restart { .. } => ("restart", Vec::new(), None),
                Action::Remove { .. } => ("remove", Vec::new(), None),
                Action::Keep { .. } => match (registered(&component), new) {
                    // Not in the spec hash: recorded by the deploy, nothing restarted.
                    (Some(old), Some(new)) if old.health != new.health => {
                        ("update", spec_diff(old, new), Some("only the health check changes: nothing is restarted".to_string()))
                    }
                    (_, Some(c)) if c.pull == Some(PullPolicy::Always) => self.tag_moved(service, c, &observed),
                    _ => ("keep", Vec::new(), None),
                },
            };
            changes.push(PlannedChange { component, action: what.into(), diff, reason });
        }
        Ok(PlanResult { service: service.to_string(), changes })
    }

    /// A kept `pull = "always"` container whose tag now points elsewhere would be replaced.
    fn tag_moved(&self, service: &str, c: &Component, observed: &[crate::runtime::Observed]) -> (&'static str, Vec<FieldDiff>, Option<String>) {
        let name = crate::plan::instance_name(service, &c.name);
        let running = observed.iter().find(|o| o.name == name).and_then(|o| o.digest.clone());
        match (running, self.runtime.registry_digest(&c.image)) {
            (Some(running), Ok(Some(now))) if running != now => (
                "replace",
                vec![FieldDiff { field: "digest".into(), old: Some(running), new: Some(now) }],
                Some(format!("pull = \"always\": {} now points at another image", c.image)),
            ),
            (_, Err(e)) => ("keep", Vec::new(), Some(format!("could not ask the registry: {e}"))),
            _ => ("keep", Vec::new(), None),
        }
    }
}

/// A plan (or an adoption) the node's policy does not allow, every field named.
pub(super) fn refused_by_policy(fields: Vec<crate::plan::FieldError>) -> RpcError {
    let message = format!("refused by this node's policy ([policy] in agent.toml): {}", super::policy::refusal(&fields));
    RpcError { code: ErrorCode::InvalidPlan, message, fields }
}

/// The fields of two specs that differ, old -> new, as compact JSON; environment values are
/// never shown (`env.KEY`: "***" on each side where it is set).
pub fn spec_diff(old: &Component, new: &Component) -> Vec<FieldDiff> {
    let as_map = |c: &Component| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    let (a, b) = (as_map(old), as_map(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        if k == "env" {
            let mut names: Vec<&String> = old.env.keys().chain(new.env.keys()).collect();
            names.sort();
            names.dedup();
            for n in names.into_iter().filter(|n| old.env.get(*n) != new.env.get(*n)) {
                let masked = |e: &std::collections::BTreeMap<String, String>| e.contains_key(n).then(|| "***".to_string());
                out.push(FieldDiff { field: format!("env.{n}"), old: masked(&old.env), new: masked(&new.env) });
            }
            continue;
        }
        out.push(FieldDiff { field: k.clone(), old: x.map(|v| v.to_string()), new: y.map(|v| v.to_string()) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_fields_and_mask_env() {
        let old = Component {
            name: "web".into(),
            image: "a:v1".into(),
            ports: vec!["8080".into()],
            env: [("TOKEN".to_string(), "old-secret".to_string()), ("MODE".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        let mut new = old.clone();
        new.image = "a:v2".into();
        new.ports.clear();
        new.env.insert("TOKEN".into(), "new-secret".into());
        new.env.insert("ADDED".into(), "v".into());
        let d = spec_diff(&old, &new);
        let shown: Vec<(String, Option<String>, Option<String>)> = d.iter().map(|f| (f.field.clone(), f.old.clone(), f.new.clone())).collect();
        assert_eq!(
            shown,
            vec![
                ("env.ADDED".into(), None, Some("***".into())),
                ("env.TOKEN".into(), Some("***".into()), Some("***".into())),
                ("image".into(), Some("\"a:v1\"".into()), Some("\"a:v2\"".into())),
                ("ports".into(), Some("[\"8080\"]".into()), None),
            ]
        );
        assert!(!format!("{d:?}").contains("secret"));
        assert!(spec_diff(&old, &old).is_empty());
    }
}
