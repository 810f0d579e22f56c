//! Both runtimes behind one [`Runtime`]: containers go to podman, unikernels to QEMU. Object
//! ids tell them apart (VM ids start with [`qemu::ID_PREFIX`]); listings are the union.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::qemu::{self, Qemu};
use super::{Assigned, EventStream, Observed, Runtime, RuntimeError, RuntimeEvent, Stopper};
use crate::plan::{Component, Kind};

pub struct Runtimes {
    pub containers: Box<dyn Runtime>,
    pub vms: Qemu,
}

impl Runtimes {
    fn by_id(&self, id: &str) -> &dyn Runtime {
        if id.starts_with(qemu::ID_PREFIX) {
            &self.vms
        } else {
            self.containers.as_ref()
        }
    }

    fn by_kind(&self, comp: &Component) -> &dyn Runtime {
        match comp.kind {
            Kind::Unikernel => &self.vms,
            Kind::Container => self.containers.as_ref(),
        }
    }
}

impl Runtime for Runtimes {
    fn list(&self, service: Option<&str>) -> Result<Vec<Observed>, RuntimeError> {
        let mut all = self.containers.list(service)?;
        all.extend(self.vms.list(service)?);
        Ok(all)
    }

    fn list_all(&self) -> Result<Vec<Observed>, RuntimeError> {
        let mut all = self.containers.list_all()?;
        all.extend(self.vms.list_all()?);
        Ok(all)
    }

    fn watch(&self) -> Result<Box<dyn EventStream>, RuntimeError> {
        let containers = self.containers.watch()?;
        let vms = self.vms.watch()?;
        Ok(Box::new(Merged::new(vec![containers, vms])))
    }

    fn logs(&self, id: &str, tail: Option<u32>, follow: bool) -> Result<std::process::Child, RuntimeError> {
        self.by_id(id).logs(id, tail, follow)
    }

    fn by_name(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        match self.containers.by_name(name)? {
            Some(o) => Ok(Some(o)),
            None => self.vms.by_name(name),
        }
    }

    fn spec_hash(&self, comp: &Component) -> Result<String, RuntimeError> {
        self.by_kind(comp).spec_hash(comp)
    }

    fn address_pool(&self, comp: &Component) -> Option<super::address::Pool> {
        self.by_kind(comp).address_pool(comp)
    }

    fn create(&self, service: &str, comp: &Component, spec: &str, assigned: &Assigned) -> Result<String, RuntimeError> {
        // One name space: a VM may not take a container's name, nor the other way round.
        let name = crate::plan::instance_name(service, &comp.name);
        let other: &dyn Runtime = match comp.kind {
            Kind::Unikernel => self.containers.as_ref(),
            Kind::Container => &self.vms,
        };
        if other.by_name(&name)?.is_some() {
            return Err(RuntimeError::NameInUse { name });
        }
        self.by_kind(comp).create(service, comp, spec, assigned)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.by_id(id).start(id)
    }

    fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.by_id(id).stop(id)
    }

    fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        self.by_id(id).restart(id)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.by_id(id).remove(id)
    }

    fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError> {
        self.by_id(id).rename(id, new_name)
    }

    fn state(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        self.by_id(id).state(id)
    }

    fn by_name_prefix(&self, prefix: &str) -> Result<Vec<Observed>, RuntimeError> {
        let mut all = self.containers.by_name_prefix(prefix)?;
        all.extend(self.vms.by_name_prefix(prefix)?);
        Ok(all)
    }

    fn describe(&self, id: &str, component: &str) -> Result<Component, RuntimeError> {
        self.by_id(id).describe(id, component)
    }

    fn tail_logs(&self, id: &str, lines: u32) -> String {
        self.by_id(id).tail_logs(id, lines)
    }

    fn settle(&self) -> Duration {
        self.containers.settle()
    }

    fn exec_check(&self, id: &str, argv: &[String], timeout: Duration) -> Result<Option<String>, RuntimeError> {
        self.by_id(id).exec_check(id, argv, timeout)
    }

    fn probe_route(&self, id: &str) -> Result<Option<super::ProbeRoute>, RuntimeError> {
        self.by_id(id).probe_route(id)
    }

    fn prepare(&self, comp: &Component, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        self.by_kind(comp).prepare(comp, progress)
    }

    fn resolve(&self, comp: &Component, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        self.by_kind(comp).resolve(comp, progress)
    }

    fn registries(&self) -> Option<&dyn super::Registries> {
        self.containers.registries()
    }

    fn registry_digest(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        self.containers.registry_digest(image)
    }
}

/// Several event streams as one; it ends when any of them ends (the follower then starts
/// them all again), and stops the others' threads.
struct Merged {
    rx: mpsc::Receiver<Option<RuntimeEvent>>,
    stoppers: Arc<Vec<Stopper>>,
    stop: Arc<AtomicBool>,
}

impl Merged {
    fn new(streams: Vec<Box<dyn EventStream>>) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stoppers = Arc::new(streams.iter().map(|s| s.stopper()).collect::<Vec<_>>());
        for mut s in streams {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || {
                for e in &mut s {
                    if stop.load(Ordering::SeqCst) || tx.send(Some(e)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(None);
            });
        }
        Merged { rx, stoppers, stop }
    }
}

impl Iterator for Merged {
    type Item = RuntimeEvent;

    fn next(&mut self) -> Option<RuntimeEvent> {
        self.rx.recv().ok().flatten()
    }
}

impl EventStream for Merged {
    fn stopper(&self) -> Stopper {
        let stoppers = self.stoppers.clone();
        Box::new(move || stoppers.iter().for_each(|s| s()))
    }
}

impl Drop for Merged {
    /// Every source stops too: none of their threads outlives the merged stream.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stoppers.iter().for_each(|s| s());
    }
}
