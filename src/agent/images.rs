//! Images and registries, agent side: what a deploy pulls before it changes anything, and
//! the registry credentials requests (validated here, carried out by the runtime).

use super::reconcile::Action;
use super::{Agent, ProgressFn};
use crate::proto::{ErrorCode, Progress, RegistryListResult, RegistryLoginParams, RegistryLogoutResult, RpcError, ServiceStatus, TagCheck};
use crate::registry::{NewEvent, ServiceRecord};
use crate::runtime::registries::{check_ca, check_registry, check_username};
use crate::runtime::Registries;

/// Longest password accepted (podman has no limit; a line of the protocol is 4 MiB).
const MAX_PASSWORD: usize = 4096;

impl Agent {
    /// Make every image the actions create from available (pulled when missing), before any
    /// of them runs: a failed pull changes nothing and is recorded as a failed deploy.
    pub(super) fn prepare_images(&self, record: &ServiceRecord, actions: &[Action], progress: ProgressFn) -> Result<(), RpcError> {
        for action in actions {
            let (Action::Create { component } | Action::Replace { component, .. }) = action else { continue };
            let Some(c) = record.component(component) else { continue };
            let mut lines = |message: String| progress(Progress { component: Some(component.clone()), message });
            self.runtime.prepare(&c.spec, &mut lines).map_err(|e| self.pull_failed(&record.name, component, e))?;
        }
        Ok(())
    }

    /// Before a component's hash is taken: with `pull = "always"`, pull (the tag may point at
    /// a new image, which makes a new hash and so a replace).
    pub(super) fn resolve_image(&self, service: &str, c: &crate::plan::Component, progress: ProgressFn) -> Result<(), RpcError> {
        let mut lines = |message: String| progress(Progress { component: Some(c.name.clone()), message });
        self.runtime.resolve(c, &mut lines).map_err(|e| self.pull_failed(service, &c.name, e))
    }

    /// A pull that failed before anything changed: said so, and recorded as a failed deploy.
    fn pull_failed(&self, service: &str, component: &str, e: crate::runtime::RuntimeError) -> RpcError {
        let err = RpcError::new(ErrorCode::Runtime, format!("{service}/{component}: {e}; nothing was changed"));
        self.record_failure(service, Some(component), &err.message);
        err
    }

    /// A deploy that failed, as a `deploy_failed` event (what the alert hook hears of).
    pub(super) fn record_failure(&self, service: &str, component: Option<&str>, message: &str) {
        let _ = self.registry().record_events(&[NewEvent {
            service: service.to_string(),
            component: component.map(str::to_string),
            kind: "deploy_failed".into(),
            message: message.to_string(),
        }]);
    }

    fn registries(&self) -> Result<&dyn Registries, RpcError> {
        self.runtime
            .registries()
            .ok_or_else(|| RpcError::new(ErrorCode::Runtime, "this agent's runtime pulls from no registry"))
    }

    /// Registry credentials are node-wide (and a CA is trusted by every podman on the node):
    /// `[policy] registry_admin = false` keeps them out of deploy keys' hands.
    fn registry_admin(&self) -> Result<(), RpcError> {
        if self.policy.registry_admin {
            return Ok(());
        }
        Err(RpcError::new(ErrorCode::BadRequest, "this node's policy does not let deploy keys manage registry credentials ([policy] registry_admin = false)"))
    }

    pub fn registry_login(&self, p: &RegistryLoginParams) -> Result<RegistryListResult, RpcError> {
        self.registry_admin()?;
        let bad = |m: String| RpcError::new(ErrorCode::BadRequest, m);
        check_registry(&p.registry).map_err(bad)?;
        check_username(&p.username).map_err(bad)?;
        if p.password.is_empty() || p.password.len() > MAX_PASSWORD || p.password.contains(['\n', '\r']) {
            return Err(bad(format!("the password must be 1-{MAX_PASSWORD} bytes on one line")));
        }
        if let Some(pem) = &p.ca_pem {
            check_ca(pem).map_err(bad)?;
        }
        self.registries()?.login(&p.registry, &p.username, &p.password, p.ca_pem.as_deref())?;
        self.registry_list()
    }

    pub fn registry_logout(&self, registry: &str) -> Result<RegistryLogoutResult, RpcError> {
        self.registry_admin()?;
        check_registry(registry).map_err(|m| RpcError::new(ErrorCode::BadRequest, m))?;
        let logged_out = self.registries()?.logout(registry)?;
        Ok(RegistryLogoutResult { registry: registry.to_string(), logged_out })
    }

    pub fn registry_list(&self) -> Result<RegistryListResult, RpcError> {
        Ok(RegistryListResult { registries: self.registries()?.list()? })
    }

    /// `status --check-registry`: for each container that says which digest it runs, ask its
    /// registry what the tag points at now (once per image).
    pub(super) fn check_tags(&self, records: &[ServiceRecord], services: &mut [ServiceStatus]) {
        let mut asked: std::collections::HashMap<String, Result<Option<String>, String>> = Default::default();
        for s in services.iter_mut() {
            let Some(record) = records.iter().find(|r| r.name == s.name) else { continue };
            for c in s.components.iter_mut() {
                let Some(running) = c.digest.clone() else { continue };
                let Some(spec) = record.component(&c.name) else { continue };
                let answer = asked
                    .entry(spec.spec.image.clone())
                    .or_insert_with(|| self.runtime.registry_digest(&spec.spec.image).map_err(|e| e.to_string()))
                    .clone();
                c.tag = match answer {
                    Ok(Some(now)) => Some(TagCheck { moved: now != running, digest: Some(now), error: None }),
                    Ok(None) => None,
                    Err(e) => Some(TagCheck { digest: None, moved: false, error: Some(e) }),
                };
            }
        }
    }
}
