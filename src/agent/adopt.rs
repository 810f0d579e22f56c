//! `adopt`: take over running containers named `<service>-<component>` that mcp did not make.

use super::{note, short, Agent, ProgressFn};
use crate::proto::{ApplyResult, Change, ChangeKind, ErrorCode, RpcError};
use crate::registry::{now_ms, ComponentRecord, Desired, NewEvent, ServiceRecord};

impl Agent {
    /// Record running containers named `<service>-<component>` as the service's components,
    /// with the spec they were created with, without touching them.
    pub fn adopt(&self, service: &str, progress: ProgressFn) -> Result<ApplyResult, RpcError> {
        let _lock = self.lock(service)?;
        if self.registry().service(service)?.is_some() {
            return Err(RpcError::new(
                ErrorCode::Conflict,
                format!("service {service:?} is already managed by mcp here; nothing to adopt"),
            ));
        }
        let prefix = format!("{service}-");
        let mut components = Vec::new();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        let mut found = self.runtime.by_name_prefix(&prefix)?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        for o in found {
            let component = o.name[prefix.len()..].to_string();
            if crate::plan::check_name(&component).is_err() || (!o.service.is_empty() && o.service != service) {
                note(&mut *progress, &component, format!("skipping {}: not a component name of {service}", o.name));
                continue;
            }
            let spec = self.runtime.describe(&o.id, &component)?;
            let hash = match &o.spec {
                Some(label) if o.service == service => label.clone(),
                _ => format!("{}{}", crate::runtime::ADOPTED_PREFIX, short(&o.id)),
            };
            note(&mut *progress, &component, format!("adopting {} ({}, {})", o.name, short(&o.id), o.state));
            let desired = Desired::from_active(o.running());
            changes.push(Change { component: component.clone(), change: ChangeKind::Adopted, spec: Some(hash.clone()) });
            events.push(NewEvent {
                service: service.to_string(),
                component: Some(component.clone()),
                kind: "adopted".into(),
                message: format!("adopted {} ({}, image {}) without restarting it", o.name, short(&o.id), spec.image),
            });
            components.push(ComponentRecord { spec, hash, desired });
        }
        // What a deploy key may not deploy it may not adopt either (a container made by hand
        // with `-v /:/host` would otherwise open / to push and pull).
        let refused: Vec<_> = components.iter().flat_map(|c| self.policy.check_one(&c.spec)).collect();
        if !refused.is_empty() {
            return Err(super::preview::refused_by_policy(refused));
        }
        if components.is_empty() {
            return Err(RpcError::new(ErrorCode::NotFound, format!("no container named {prefix}* to adopt on this node")));
        }
        let record = ServiceRecord {
            name: service.to_string(),
            node: None,
            active: components.iter().any(|c| c.desired == Desired::Running),
            updated_at: now_ms(),
            components,
        };
        self.registry().save_service(&record, &events)?;
        Ok(ApplyResult { service: service.to_string(), changes })
    }
}
