//! The agent core: owns the registry and a runtime, and carries out requests. Decisions come
//! from [`reconcile`] (pure); this module only executes them, all-or-nothing.

mod adopt;
pub mod alert;
mod batch;
pub mod boot;
mod gate;
mod holdings;
pub mod inflight;
pub mod health;
pub mod config;
pub mod files;
mod images;
mod intents;
pub mod logs;
pub mod monitor;
pub mod policy;
mod parallel;
mod preview;
mod recovery;
pub use recovery::Occasion;
mod probe;
mod rollback;
mod routes;
pub mod reconcile;
pub mod rpc;
pub mod serve;
pub mod status;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};


use crate::plan::{instance_name, Plan, Target};
use crate::proto::{
    ApplyResult, Change, ChangeKind, ComponentSummary, ErrorCode, GetBeginParams, ListResult, Progress, PsEntry, PsResult,
    PutBeginParams, RpcError, ServiceSummary, StatusParams, StatusResult, TransferInfo,
};
use crate::registry::{now_ms, ComponentRecord, Desired, NewEvent, Registry, RegistryError, ServiceRecord};
use crate::runtime::{Observed, Runtime, RuntimeError};
use reconcile::{reconcile, Action};
use rollback::Undo;

pub const REGISTRY_FILE: &str = "registry.db";
/// Per-service lock files (`<state>/locks/<service>.lock`): deploys of one service are
/// serialized across threads and processes; other services proceed.
const LOCK_DIR: &str = "locks";

impl From<RegistryError> for RpcError {
    fn from(e: RegistryError) -> Self {
        RpcError::new(ErrorCode::Registry, e.to_string())
    }
}

impl From<RuntimeError> for RpcError {
    fn from(e: RuntimeError) -> Self {
        RpcError::new(ErrorCode::Runtime, e.to_string())
    }
}

/// Sink for progress messages of long work.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress);

/// Shared by every request of a process (the `serve` daemon runs them concurrently): the
/// registry connection is held only for single queries and transactions, runtime work runs
/// under the service's lock.
/// How long a deploy waits for a container someone else is stopping or removing.
const SETTLING_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Agent {
    state_dir: PathBuf,
    registry: Mutex<Registry>,
    /// A read-only connection: reads do not wait behind a write holding `registry`.
    reader: Mutex<Registry>,
    /// The registry was made by this open and nobody has looked at the runtime since.
    fresh: std::sync::atomic::AtomicBool,
    runtime: Box<dyn Runtime>,
    /// What the monitor last observed, when a daemon keeps it current.
    cache: Option<std::sync::Arc<monitor::ObservedCache>>,
    /// What a deploy may ask of this node.
    policy: policy::Policy,
    /// What the health watch (and the deploy's gate) last saw.
    health: std::sync::Arc<health::Board>,
    /// The order services come back in (see [`boot`]).
    boot: boot::BootConfig,
}

/// What a successful run of actions leaves to do once nothing can fail any more.
#[derive(Default)]
struct Applied {
    changes: Vec<Change>,
    events: Vec<NewEvent>,
    /// Irreversible: old containers of replacements, and removed components.
    to_remove: Vec<(String, String)>,
    /// How to take the runtime steps back if the registry cannot record them.
    undo: Vec<Undo>,
}

impl Agent {
    /// Open the registry in `state_dir` (created 0700) with the given runtime.
    pub fn open(state_dir: &Path, runtime: Box<dyn Runtime>) -> Result<Agent, RegistryError> {
        let registry = Registry::open(&state_dir.join(REGISTRY_FILE))?;
        let reader = Registry::open_reader(&state_dir.join(REGISTRY_FILE))?;
        let fresh = std::sync::atomic::AtomicBool::new(registry.is_fresh());
        let agent = Agent {
            state_dir: state_dir.to_path_buf(),
            registry: Mutex::new(registry),
            reader: Mutex::new(reader),
            runtime,
            cache: None,
            policy: policy::Policy::default(),
            health: Default::default(),
            boot: Default::default(),
            fresh,
        };
        Ok(agent)
    }

    /// Refuse plans that ask for more than `policy` allows.
    pub fn with_policy(mut self, policy: policy::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Recover in these stages (agent.toml `[[boot.sequence]]`).
    pub fn with_boot(mut self, boot: boot::BootConfig) -> Self {
        self.boot = boot;
        self
    }

    /// Answer `status`/`ps` from `cache` while it is current (the daemon's monitor keeps it so).
    pub fn with_cache(mut self, cache: std::sync::Arc<monitor::ObservedCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// What the health watch last saw of each component with a health check.
    pub fn health(&self) -> &health::Board {
        &self.health
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn runtime(&self) -> &dyn Runtime {
        self.runtime.as_ref()
    }

    /// The registry, for one query or transaction.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The registry for reading only (what was last committed): never waits behind a write.
    pub fn reader(&self) -> MutexGuard<'_, Registry> {
        self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait for the service's lock (serializes changes to one service across threads and
    /// processes on this node).
    fn lock(&self, service: &str) -> Result<File, RpcError> {
        let f = self.lock_file(service)?;
        f.lock().map_err(|e| RpcError::new(ErrorCode::Registry, format!("cannot lock service {service}: {e}")))?;
        Ok(f)
    }

    /// The service's lock if nobody holds it (the monitor skips services being changed).
    pub fn try_lock(&self, service: &str) -> Result<Option<File>, RpcError> {
        let f = self.lock_file(service)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(RpcError::new(ErrorCode::Registry, format!("cannot lock service {service}: {e}")))
            }
        }
    }

    fn lock_file(&self, service: &str) -> Result<File, RpcError> {
        // The name becomes a file name: only valid service names get that far.
        crate::plan::check_name(service).map_err(|why| RpcError::new(ErrorCode::BadRequest, why))?;
        let dir = self.state_dir.join(LOCK_DIR);
        let err = |e: std::io::Error| RpcError::new(ErrorCode::Registry, format!("cannot create lock in {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(err)?;
        File::create(dir.join(format!("{service}.lock"))).map_err(err)
    }

    /// Tell the cache that the runtime changed under it.
    fn changed(&self) {
        if let Some(c) = &self.cache {
            c.invalidate();
        }
    }

    pub fn deploy(&self, plan: &Plan, only: Option<&str>, progress: ProgressFn) -> Result<ApplyResult, RpcError> {
        self.admit(plan, only)?;
        let _lock = self.lock(&plan.name)?;
        let prev = self.registry().service(&plan.name)?;
        let desired = Desired::from_active(plan.active);
        // Only the components in scope: VMs hash their baked volume dirs' contents.
        let mut wanted = Vec::with_capacity(plan.components.len());
        for c in plan.components.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
            self.resolve_image(&plan.name, c, progress)?;
            let run = self.with_routes(&plan.name, c, true)?;
            let hash = self.runtime.spec_hash(&run)?;
            wanted.push(ComponentRecord { spec: run, hash, desired });
        }

        let record = record_of(plan, prev.as_ref(), wanted, only);
        self.apply(&record, prev.as_ref().map(|p| p.components.as_slice()), only, false, progress)
    }

    /// Set components' desired state (stop/start) and make it so.
    pub fn set_running(&self, target: &Target, run: bool, progress: ProgressFn) -> Result<ApplyResult, RpcError> {
        let _lock = self.lock(&target.service)?;
        let mut record = self.known(target)?;
        let desired = Desired::from_active(run);
        for c in record.components.iter_mut().filter(|c| target.component.as_deref().is_none_or(|o| o == c.spec.name)) {
            c.desired = desired;
        }
        if target.component.is_none() {
            record.active = run;
        }
        record.updated_at = now_ms();
        // Only desired states changed: the components' hashes are the registered ones.
        self.apply(&record, Some(&record.components), target.component.as_deref(), false, progress)
    }

    pub fn restart(&self, target: &Target, progress: ProgressFn) -> Result<ApplyResult, RpcError> {
        let _lock = self.lock(&target.service)?;
        let mut record = self.known(target)?;
        for c in record.components.iter_mut().filter(|c| target.component.as_deref().is_none_or(|o| o == c.spec.name)) {
            c.desired = Desired::Running;
        }
        if target.component.is_none() {
            record.active = true;
        }
        record.updated_at = now_ms();
        self.apply(&record, Some(&record.components), target.component.as_deref(), true, progress)
    }

    /// The registry's record of `target`, or a not-found error naming what exists.
    pub(crate) fn known(&self, target: &Target) -> Result<ServiceRecord, RpcError> {
        let record = self.registry().service(&target.service)?.ok_or_else(|| {
            RpcError::new(ErrorCode::NotFound, format!("service {:?} is not deployed on this node", target.service))
        })?;
        if let Some(c) = &target.component {
            if record.component(c).is_none() {
                let names: Vec<&str> = record.components.iter().map(|c| c.spec.name.as_str()).collect();
                return Err(RpcError::new(
                    ErrorCode::NotFound,
                    format!("service {} has no component {c:?}; components: {}", record.name, names.join(", ")),
                ));
            }
        }
        Ok(record)
    }

    /// Make the node match `record` (within `only`), then store it. All-or-nothing: on failure
    /// every step taken is undone and the registry keeps the previous record. `registered` is
    /// what the registry held for the service before (None: never deployed here).
    fn apply(
        &self,
        record: &ServiceRecord,
        registered: Option<&[ComponentRecord]>,
        only: Option<&str>,
        restart: bool,
        progress: ProgressFn,
    ) -> Result<ApplyResult, RpcError> {
        let result = self.apply_inner(record, registered, only, restart, progress);
        // Whatever happened, what the monitor last saw may be out of date now.
        self.changed();
        self.release_unused(&record.name);
        result
    }

    /// Finish or undo replaces of `service` that an earlier agent was killed in the middle of
    /// (what the registry holds decides which: it is written last). Call under the service's
    /// lock with `registered` = the registry's components; true when anything changed.
    pub fn recover(&self, service: &str, registered: &[ComponentRecord], observed: &[Observed], progress: ProgressFn) -> Result<bool, RpcError> {
        let todo = reconcile::interrupted(service, registered, observed);
        let mut events = Vec::new();
        for r in &todo {
            let (component, message) = match r {
                reconcile::Recovery::Undo { component, old_id, new_id, start } => {
                    let name = instance_name(service, component);
                    note(&mut *progress, component, format!("undoing an interrupted replace of {name}"));
                    if let Some(id) = new_id {
                        self.runtime.remove(id)?;
                    }
                    self.runtime.rename(old_id, &name)?;
                    if *start {
                        self.runtime.start(old_id)?;
                    }
                    (component, format!("undid an interrupted replace of {name}: the registered version is back under its name"))
                }
                reconcile::Recovery::Finish { component, old_id } => {
                    let old = reconcile::old_name(service, component);
                    note(&mut *progress, component, format!("removing {old}, left by an interrupted replace"));
                    self.runtime.remove(old_id)?;
                    (component, format!("finished an interrupted replace: removed {old}"))
                }
            };
            events.push(NewEvent { service: service.to_string(), component: Some(component.clone()), kind: "recovered".into(), message });
        }
        if !events.is_empty() {
            self.changed();
            self.registry().record_events(&events)?;
        }
        Ok(!todo.is_empty())
    }

    /// Create the instance of a registered component, with what the agent assigns it (a
    /// static address, kept in the registry, when its network hands out none).
    pub fn create_instance(&self, service: &str, c: &ComponentRecord) -> Result<String, RuntimeError> {
        // Every create, not only a deploy's: a component registered before the policy was
        // narrowed (then started, restarted or repaired) is not made again either.
        let refused = self.policy.check_one(&c.spec);
        if !refused.is_empty() {
            return Err(RuntimeError::Unsupported(format!("{service}/{} is refused by this node's policy: {}", c.spec.name, policy::refusal(&refused))));
        }
        let mut assigned = crate::runtime::Assigned::default();
        if let Some(pool) = self.runtime.address_pool(&c.spec) {
            let name = &c.spec.name;
            let got = self.registry().assign_address(service, name, &pool);
            assigned.address = Some(match got {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return Err(RuntimeError::Unsupported(format!(
                        "no free address left in {}/{} for {service}/{name}; set a larger [qemu] subnet",
                        pool.network, pool.prefix
                    )))
                }
                Err(e) => return Err(RuntimeError::Unsupported(format!("assigning an address to {service}/{name}: {e}"))),
            });
        }
        self.runtime.create(service, &c.spec, &c.hash, &assigned)
    }

    /// What `service` has, once nothing of it is half-way (a stop or removal someone else
    /// started): deciding on a `stopping` container would start it while it stops. Waits at
    /// most [`SETTLING_LIMIT`]; then what the runtime says is taken as it is.
    fn list_settled(&self, service: &str, progress: ProgressFn) -> Result<Vec<Observed>, RpcError> {
        let end = std::time::Instant::now() + SETTLING_LIMIT;
        let mut said = false;
        loop {
            let found = self.runtime.list(Some(service))?;
            let Some(o) = found.iter().find(|o| o.settling()) else { return Ok(found) };
            if std::time::Instant::now() >= end {
                return Ok(found);
            }
            if !said {
                note(&mut *progress, &o.component, format!("waiting for {} ({})", o.name, o.state));
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    fn apply_inner(
        &self,
        record: &ServiceRecord,
        registered: Option<&[ComponentRecord]>,
        only: Option<&str>,
        restart: bool,
        progress: ProgressFn,
    ) -> Result<ApplyResult, RpcError> {
        let service = record.name.as_str();
        // A service the registry has never seen has nothing on the node to look at; if that
        // is wrong (a container already holds a name) creation says so and we look then.
        let assume_empty = registered.is_none();
        let mut observed = match registered {
            None => Vec::new(),
            Some(components) => {
                let mut found = self.list_settled(service, progress)?;
                if self.recover(service, components, &found, progress)? {
                    found = self.runtime.list(Some(service))?;
                }
                reconcile::claim_adopted(&mut found, components);
                found
            }
        };
        let mut actions = reconcile(service, &record.components, &observed, only);
        if restart {
            actions = actions.into_iter().map(|a| restart_kept(a, service, &observed)).collect();
        }
        self.prepare_images(record, &actions, progress)?;
        let result = match self.execute(record, &actions, progress) {
            Err(ExecError::NameInUse(name)) if assume_empty => {
                observed = self.runtime.list(Some(service))?;
                if !observed.iter().any(|o| o.name == name && o.managed) {
                    return Err(self.conflict(service, &name));
                }
                actions = reconcile(service, &record.components, &observed, only);
                self.execute(record, &actions, progress)
            }
            other => other,
        };
        let applied = match result {
            Ok(applied) => applied,
            Err(ExecError::NameInUse(name)) => return Err(self.conflict(service, &name)),
            Err(ExecError::Failed(e)) => {
                self.record_failure(service, None, &e.message);
                return Err(e);
            }
        };
        // The commit point. A registry that cannot take it (full disk, locked, damaged) must not
        // leave the node changed behind its back: the runtime steps are undone.
        if let Err(e) = self.registry().save_service(record, &applied.events) {
            progress(Progress { component: None, message: format!("cannot record the deploy ({e}); rolling back") });
            let undone = self.rollback(applied.undo);
            let cause = format!("the agent's registry could not record it ({e})");
            return Err(RpcError::new(ErrorCode::Registry, rollback::failed_deploy(service, &cause, &undone)));
        }
        let mut cleanup_errors = Vec::new();
        for (component, id) in &applied.to_remove {
            progress(Progress { component: Some(component.clone()), message: format!("removing {}", short(id)) });
            if let Err(e) = self.runtime.remove(id) {
                cleanup_errors.push(format!("{component}: {e}"));
            }
        }
        if !cleanup_errors.is_empty() {
            return Err(RpcError::new(
                ErrorCode::Runtime,
                format!("{service} is deployed, but removing old containers failed: {}", cleanup_errors.join("; ")),
            ));
        }
        Ok(ApplyResult { service: service.to_string(), changes: applied.changes })
    }

    fn conflict(&self, service: &str, name: &str) -> RpcError {
        RpcError::new(
            ErrorCode::Conflict,
            format!(
                "a container named {name:?} exists but does not belong to mcp service {service:?}; \
                 remove it (podman rm -f {name}) or take it over with `mcp adopt {service}`"
            ),
        )
    }

    fn execute(&self, record: &ServiceRecord, actions: &[Action], progress: ProgressFn) -> Result<Applied, ExecError> {
        let service = record.name.as_str();
        let mut undo: Vec<Undo> = Vec::new();
        let mut applied = Applied::default();
        // Instances this deploy made: they must prove themselves before it commits.
        let mut fresh: Vec<(String, String)> = Vec::new();
        let spec_of = |component: &str| record.component(component).expect("reconcile only names known components");

        let mut step = |action: &Action, undo: &mut Vec<Undo>, applied: &mut Applied| -> Result<(), ExecError> {
            let component = action.component().to_string();
            let (change, message) = match action {
                Action::Keep { .. } => {
                    applied.changes.push(Change { component: component.clone(), change: ChangeKind::Unchanged, spec: Some(spec_of(&component).hash.clone()) });
                    return Ok(());
                }
                Action::Create { .. } => {
                    let c = spec_of(&component);
                    note(&mut *progress, &component, format!("creating {} from {}", instance_name(service, &component), c.spec.kernel.as_deref().unwrap_or(&c.spec.image)));
                    let id = self.create_instance(service, c).map_err(ExecError::from)?;
                    fresh.push((component.clone(), id.clone()));
                    undo.push(Undo::RemoveNew { id });
                    (ChangeKind::Created, format!("created {} (spec {}, image {})", instance_name(service, &component), c.hash, c.spec.image))
                }
                Action::Replace { old_id, old_running, .. } => {
                    let c = spec_of(&component);
                    let name = instance_name(service, &component);
                    note(&mut *progress, &component, format!("replacing {name} with spec {} (image {})", c.hash, c.spec.image));
                    // Undone from what the runtime then shows: a rename that happened but reported
                    // a failure is taken back too.
                    undo.push(Undo::RestoreOld { old_id: old_id.clone(), name: name.clone(), was_running: *old_running, new_id: None });
                    self.runtime.rename(old_id, &reconcile::old_name(service, &component)).map_err(ExecError::from)?;
                    if *old_running {
                        self.runtime.stop(old_id).map_err(ExecError::from)?;
                    }
                    let id = self.create_instance(service, c).map_err(ExecError::from)?;
                    if let Some(Undo::RestoreOld { new_id, .. }) = undo.last_mut() {
                        *new_id = Some(id.clone());
                    }
                    fresh.push((component.clone(), id));
                    applied.to_remove.push((component.clone(), old_id.clone()));
                    (ChangeKind::Replaced, format!("replaced {name} (spec {}, image {})", c.hash, c.spec.image))
                }
                Action::Start { id, .. } => {
                    note(&mut *progress, &component, format!("starting {}", instance_name(service, &component)));
                    // Undo first: a start that happened but reported a failure is taken back too.
                    undo.push(Undo::Stop { id: id.clone() });
                    self.runtime.start(id).map_err(ExecError::from)?;
                    (ChangeKind::Started, format!("started {}", instance_name(service, &component)))
                }
                Action::Restart { id, .. } => {
                    note(&mut *progress, &component, format!("restarting {}", instance_name(service, &component)));
                    // It ran before: a restart cut short (its stop done, its start not) is undone.
                    undo.push(Undo::Start { id: id.clone() });
                    self.runtime.restart(id).map_err(ExecError::from)?;
                    (ChangeKind::Restarted, format!("restarted {}", instance_name(service, &component)))
                }
                Action::Stop { id, .. } => {
                    note(&mut *progress, &component, format!("stopping {}", instance_name(service, &component)));
                    undo.push(Undo::Start { id: id.clone() });
                    self.runtime.stop(id).map_err(ExecError::from)?;
                    (ChangeKind::Stopped, format!("stopped {}", instance_name(service, &component)))
                }
                Action::Remove { id, .. } => {
                    applied.to_remove.push((component.clone(), id.clone()));
                    (ChangeKind::Removed, format!("removed {} ({})", component, short(id)))
                }
            };
            applied.changes.push(Change { component: component.clone(), change, spec: record.component(&component).map(|c| c.hash.clone()) });
            applied.events.push(NewEvent { service: service.to_string(), component: Some(component), kind: change.as_str().to_string(), message });
            Ok(())
        };

        let mut outcome = Ok(());
        for action in actions {
            if let Err(e) = step(action, &mut undo, &mut applied) {
                outcome = Err(e);
                break;
            }
        }
        if outcome.is_ok() && !fresh.is_empty() {
            outcome = self.wait_up(record, &fresh, progress);
        }
        match outcome {
            Ok(()) => {
                applied.undo = undo;
                Ok(applied)
            }
            Err(ExecError::NameInUse(name)) if undo.is_empty() => Err(ExecError::NameInUse(name)),
            Err(e) => {
                let cause = match e {
                    ExecError::NameInUse(name) => format!("a container named {name:?} already exists"),
                    ExecError::Failed(e) => e.message,
                };
                progress(Progress { component: None, message: format!("failed: {cause}; rolling back") });
                let undone = self.rollback(undo);
                Err(ExecError::Failed(RpcError::new(ErrorCode::RolledBack, rollback::failed_deploy(service, &cause, &undone))))
            }
        }
    }

    /// The plan as the registry holds it.
    pub fn show(&self, service: &str) -> Result<Plan, RpcError> {
        self.registry()
            .plan(service)?
            .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("service {service:?} is not deployed on this node")))
    }

    /// Remove every container of a service and forget it.
    pub fn remove(&self, service: &str, progress: ProgressFn) -> Result<ApplyResult, RpcError> {
        let _lock = self.lock(service)?;
        let record = self.known(&Target { service: service.to_string(), component: None })?;
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for o in self.runtime.list(Some(service))? {
            note(&mut *progress, &o.component, format!("removing {}", o.name));
            self.runtime.remove(&o.id)?;
            changes.push(Change { component: o.component.clone(), change: ChangeKind::Removed, spec: o.spec.clone() });
            events.push(NewEvent {
                service: service.to_string(),
                component: Some(o.component.clone()),
                kind: "removed".into(),
                message: format!("removed {} ({})", o.name, short(&o.id)),
            });
        }
        events.push(NewEvent {
            service: service.to_string(),
            component: None,
            kind: "forgotten".into(),
            message: format!("service removed from the registry ({} components)", record.components.len()),
        });
        self.changed();
        self.registry().delete_service(service, &events)?;
        self.release_unused(service);
        Ok(ApplyResult { service: service.to_string(), changes })
    }

    /// Begin a push into the service's volume dirs (a transfer of the session `transfers`).
    pub fn put_begin(&self, transfers: &mut files::Transfers, p: &PutBeginParams) -> Result<TransferInfo, RpcError> {
        let roots = self.policy.transfer_roots(files::volume_roots(&self.show(&p.service)?));
        let requested = p.path.clone().unwrap_or_else(|| p.name.clone());
        let mut target = files::resolve(&roots, &requested)?;
        // Into a directory: the file keeps its name. (A directory swapped in after this look
        // is refused when the upload is created.)
        let is_dir = std::fs::symlink_metadata(target.path()).is_ok_and(|m| m.is_dir());
        if requested.ends_with('/') || is_dir {
            target = target.child(&p.name)?;
        }
        transfers.put_begin(&target, p.mode, p.size)
    }

    /// Begin a pull from the service's volume dirs.
    pub fn get_begin(&self, transfers: &mut files::Transfers, p: &GetBeginParams) -> Result<TransferInfo, RpcError> {
        let roots = self.policy.transfer_roots(files::volume_roots(&self.show(&p.service)?));
        transfers.get_begin(&files::resolve(&roots, &p.path)?)
    }

    pub fn list(&self) -> Result<ListResult, RpcError> {
        let services = self
            .registry()
            .services()?
            .into_iter()
            .map(|s| ServiceSummary {
                name: s.name,
                active: s.active,
                updated_at: s.updated_at,
                components: s
                    .components
                    .into_iter()
                    .map(|c| ComponentSummary {
                        name: c.spec.name,
                        kind: c.spec.kind.as_str().to_string(),
                        image: c.spec.image,
                        desired: c.desired.as_str().to_string(),
                        spec: c.hash,
                    })
                    .collect(),
            })
            .collect();
        Ok(ListResult { services })
    }

    /// What the runtime shows for `service` (all mcp objects when None): from the monitor's
    /// cache while it is current, else from the runtime.
    pub fn observe(&self, service: Option<&str>) -> Result<Vec<Observed>, RpcError> {
        self.note_strangers_once();
        let Some(cache) = &self.cache else { return Ok(self.runtime.list(service)?) };
        let all = match cache.current() {
            Some(all) => all,
            None => cache.refresh(self.runtime.as_ref())?,
        };
        Ok(crate::runtime::select(&all, service))
    }

    pub fn ps(&self) -> Result<PsResult, RpcError> {
        let now = now_ms() / 1000;
        let records = self.reader().services()?;
        let routes_of = |service: &str, component: &str| {
            let spec = records.iter().find(|r| r.name == service).and_then(|r| r.component(component)).map(|c| &c.spec);
            spec.map(crate::plan::routes::shown).unwrap_or_default()
        };
        let containers = self
            .observe(None)?
            .into_iter()
            .map(|o| PsEntry {
                routes: routes_of(&o.service, &o.component),
                uptime_secs: o.started_at.map(|t| (now - t).max(0) as u64),
                id: o.id.clone(),
                name: o.name,
                image: o.image,
                state: o.state,
                spec: o.spec.unwrap_or_default(),
                ports: o.ports,
                health: self.health.view(&o.service, &o.component, Some(&o.id)).map(|(h, _)| h.as_str().to_string()),
                address: o.address,
                digest: o.digest,
                service: o.service,
                component: o.component,
            })
            .collect();
        Ok(PsResult { containers })
    }

    pub fn status(&self, params: &StatusParams) -> Result<StatusResult, RpcError> {
        // One read of the registry (records, repair counts, events at one moment), then one
        // listing of the runtime. A registry made just now first says what it found.
        self.note_strangers_once();
        let mut snap = self.reader().status_snapshot(params.service.as_deref(), params.events)?;
        if let (Some(name), true) = (&params.service, snap.records.is_empty()) {
            return Err(RpcError::new(ErrorCode::NotFound, format!("service {name:?} is not deployed on this node")));
        }
        let records = std::mem::take(&mut snap.records);
        let observed = self.observe(params.service.as_deref())?;
        let repairs = |service: &str| snap.repairs.get(service).cloned().unwrap_or_default();
        let mut services = status::service_statuses(&records, &observed, &repairs, now_ms() / 1000);
        for s in &mut services {
            s.events = snap.events.remove(&s.name).unwrap_or_default();
            for c in &mut s.components.iter_mut().filter(|c| c.observed == "running" && c.desired == "running") {
                let name = instance_name(&s.name, &c.name);
                let Some(id) = observed.iter().find(|o| o.name == name).map(|o| o.id.as_str()) else { continue };
                if let Some((h, why)) = self.health.view(&s.name, &c.name, Some(id)) {
                    c.health = Some(h.as_str().to_string());
                    c.health_detail = why;
                }
            }
        }
        if params.check_registry {
            self.check_tags(&records, &mut services);
        }
        Ok(StatusResult { services })
    }
}

/// For restart: a component that is already as desired is restarted instead of kept.
fn restart_kept(action: Action, service: &str, observed: &[Observed]) -> Action {
    match action {
        Action::Keep { component } => {
            let name = instance_name(service, &component);
            match observed.iter().find(|o| o.name == name && o.running()) {
                Some(o) => Action::Restart { component, id: o.id.clone() },
                None => Action::Keep { component },
            }
        }
        other => other,
    }
}

/// `prev` with component `name` taken from `wanted`, in the plan's order.
/// What the registry will hold after a deploy of `plan`: with a component scope, the other
/// components stay as they were deployed before.
fn record_of(plan: &Plan, prev: Option<&ServiceRecord>, wanted: Vec<ComponentRecord>, only: Option<&str>) -> ServiceRecord {
    let components = match (prev, only) {
        (Some(prev), Some(c)) => merge_one(&prev.components, &wanted, c, plan),
        _ => wanted,
    };
    ServiceRecord { name: plan.name.clone(), node: plan.node.clone(), active: plan.active, updated_at: now_ms(), components }
}

fn merge_one(prev: &[ComponentRecord], wanted: &[ComponentRecord], name: &str, plan: &Plan) -> Vec<ComponentRecord> {
    let mut out: Vec<ComponentRecord> = prev.iter().filter(|c| c.spec.name != name).cloned().collect();
    if let Some(w) = wanted.iter().find(|w| w.spec.name == name) {
        out.push(w.clone());
    }
    let pos = |n: &str| plan.components.iter().position(|c| c.name == n).unwrap_or(usize::MAX);
    out.sort_by_key(|c| pos(&c.spec.name));
    out
}

fn note(progress: ProgressFn, component: &str, message: String) {
    progress(Progress { component: Some(component.to_string()), message });
}

fn component_names(plan: &Plan) -> String {
    plan.components.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

enum ExecError {
    /// Creation hit a name held by another container (nothing was changed yet).
    NameInUse(String),
    Failed(RpcError),
}

impl From<RuntimeError> for ExecError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NameInUse { name } => ExecError::NameInUse(name),
            other => ExecError::Failed(other.into()),
        }
    }
}
