//! Unikernel components as QEMU VMs, one per component, each in its own dir under the agent's
//! state dir ([`record`]). VMs run daemonized, so they outlive agent restarts like containers
//! do; the agent supervises them by pid (pidfds for exit events, [`events`]) and QMP
//! ([`control`]). What a VM boots from is built per form ([`build`]): a Linux kernel with
//! baked volumes, a Nanos image mcp builds from a program, or a prebuilt disk image. The
//! command line is pure ([`argv`]); isolated networks and their addresses are [`net`].

pub mod argv;
mod build;
pub mod control;
mod events;
pub mod net;
pub mod probe_ns;
pub mod record;
mod strays;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use argv::{qemu_argv, Form};
pub use build::nanos_image;
pub use control::{qmp, qmp_reply};
pub use net::{isolated_net, net_up_argv, IsolatedNet};
pub use record::{VmPaths, VmRecord};

use super::address::{Pool, DEFAULT_SUBNET};
use super::bake::nanos::NanosConfig;
use super::{Assigned, EventStream, Observed, Runtime, RuntimeError};
use crate::plan::{hex_prefix, instance_name, parse_port, Component};
use crate::registry::now_ms;
use crate::runtime::io_err;

/// `[qemu]` in agent.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// The qemu-system-x86_64 binary; found on PATH when unset.
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// `auto` (default: `kvm` once a Linux kernel was seen to boot under it, else `tcg`),
    /// `tcg`, `kvm`, or anything else qemu's `-accel` takes.
    #[serde(default)]
    pub accel: Option<String>,
    /// The Linux kernel `auto` boot-tests KVM with; the host's own when unset.
    #[serde(default)]
    pub probe_kernel: Option<PathBuf>,
    /// How long that boot test may take (default 15 s).
    #[serde(default)]
    pub probe_secs: Option<u64>,
    /// The `ops` binary (NanoVMs), used for the image form with volumes only when no Nanos
    /// toolchain is configured; found on PATH when unset.
    #[serde(default)]
    pub ops: Option<PathBuf>,
    /// How long one `ops build` may take (default 1800 s: ops may download a Nanos release).
    #[serde(default)]
    pub ops_build_secs: Option<u64>,
    /// The IPv4 pool VMs on isolated networks get static addresses from (default 10.213.0.0/16).
    #[serde(default)]
    pub subnet: Option<String>,
}

/// VM ids start with this, so one id space serves containers and VMs.
pub const ID_PREFIX: &str = "vm-";
/// Where the kernel form's environment is baked in the guest.
pub const GUEST_ENV_FILE: &str = "/etc/mcp/env";

fn hex(input: &str, n: usize) -> String {
    hex_prefix(&Sha256::digest(input.as_bytes()), n)
}

/// A VM's registry hash: its spec's, and the fingerprint of what it bakes, when it bakes any.
fn spec_with(comp: &Component, contents: Option<&str>) -> String {
    let base = crate::plan::spec_hash(comp);
    match contents {
        None => base,
        Some(contents) => hex(&format!("{base}\ncontents {contents}"), 16),
    }
}

pub struct Qemu {
    config: QemuConfig,
    nanos: NanosConfig,
    pool: Pool,
    dir: PathBuf,
    /// Where `auto` keeps its KVM verdict.
    accel_verdict: PathBuf,
    program: OnceLock<PathBuf>,
    settle: Duration,
    /// Neighbour entries pinned in probe namespaces: (namespace inode, address, MAC).
    pinned: std::sync::Mutex<std::collections::HashSet<(u64, std::net::Ipv4Addr, String)>>,
}

impl Qemu {
    /// VMs live under `<state_dir>/vms`. Fails on a `[qemu] subnet` that is not one.
    pub fn new(config: QemuConfig, nanos: NanosConfig, state_dir: &Path, settle: Duration) -> Result<Self, String> {
        let pool = Pool::parse(config.subnet.as_deref().unwrap_or(DEFAULT_SUBNET)).map_err(|e| format!("[qemu] subnet: {e}"))?;
        Ok(Qemu {
            config,
            nanos,
            pool,
            dir: state_dir.join(record::VMS_DIR),
            accel_verdict: state_dir.join(super::accel::VERDICT_FILE),
            program: OnceLock::new(),
            settle,
            pinned: Default::default(),
        })
    }

    fn ops_build_limit(&self) -> Duration {
        Duration::from_secs(self.config.ops_build_secs.unwrap_or(1800))
    }

    fn program(&self) -> Result<&Path, RuntimeError> {
        super::find_program(&self.program, self.config.program.as_deref(), "qemu-system-x86_64")
    }

    fn paths(&self, name: &str) -> VmPaths {
        VmPaths { dir: self.dir.join(name) }
    }

    fn load(&self, name: &str) -> Option<VmRecord> {
        record::load(&self.dir, name)
    }

    fn save(&self, rec: &VmRecord) -> Result<(), RuntimeError> {
        record::save(&self.dir, rec)
    }

    fn records(&self) -> Vec<VmRecord> {
        record::read_all(&self.dir)
    }

    fn by_id(&self, id: &str) -> Result<VmRecord, RuntimeError> {
        self.records()
            .into_iter()
            .find(|r| r.id == id || (id.len() >= 6 && r.id.starts_with(id)))
            .ok_or_else(|| RuntimeError::NotFound { kind: "VM", id: id.to_string() })
    }

    fn pid(&self, rec: &VmRecord) -> Option<u32> {
        record::running_pid(&self.dir, rec)
    }

    fn observe(&self, rec: &VmRecord) -> Observed {
        let running = self.pid(rec).is_some();
        let c = &rec.comp;
        Observed {
            id: rec.id.clone(),
            name: rec.name.clone(),
            service: rec.service.clone(),
            component: rec.component.clone(),
            spec: Some(rec.spec.clone()),
            image: c.program.clone().or_else(|| c.kernel.clone()).unwrap_or_else(|| c.image.clone()),
            state: if running { "running".into() } else { "exited".into() },
            started_at: if running { rec.started_at } else { None },
            ports: c
                .ports
                .iter()
                .filter_map(|p| parse_port(p).ok())
                .map(|p| {
                    let ip = p.ip.map(|ip| format!("{ip}:")).unwrap_or_default();
                    format!("{ip}{}->{}/{}", p.host_port.unwrap_or(0), p.container_port, p.proto)
                })
                .collect(),
            restarts: 0,
            exit_code: None,
            managed: true,
            // What the VM was made with is its vm.json, written by mcp.
            made: None,
            address: rec.address.clone(),
            digest: None,
        }
    }

    fn accel(&self) -> Result<String, RuntimeError> {
        let choice = super::accel::choose(&self.config, self.program()?, &self.accel_verdict);
        tracing::debug!(accel = %choice.accel, why = %choice.why, "accelerator for a new VM");
        Ok(choice.accel)
    }

    fn form(&self, comp: &Component) -> Form {
        Form::of(comp, self.nanos.dir.is_some())
    }
}

impl Runtime for Qemu {
    fn list(&self, service: Option<&str>) -> Result<Vec<Observed>, RuntimeError> {
        Ok(super::select(&self.list_all()?, service))
    }

    fn list_all(&self) -> Result<Vec<Observed>, RuntimeError> {
        Ok(self.records().iter().map(|r| self.observe(r)).collect())
    }

    fn watch(&self) -> Result<Box<dyn EventStream>, RuntimeError> {
        Ok(Box::new(events::VmEvents::new(self.dir.clone())))
    }

    fn logs(&self, id: &str, tail: Option<u32>, follow: bool) -> Result<std::process::Child, RuntimeError> {
        use std::process::{Command, Stdio};
        let rec = self.by_id(id)?;
        let tail_bin = which::which("tail").map_err(|source| RuntimeError::Missing { program: "tail".into(), source })?;
        let mut cmd = Command::new(&tail_bin);
        cmd.arg("-n").arg(tail.map(|n| n.to_string()).unwrap_or_else(|| "+1".into()));
        if follow {
            cmd.arg("-F");
        }
        cmd.arg(self.paths(&rec.name).serial()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        cmd.spawn().map_err(|source| RuntimeError::Spawn { program: "tail".into(), step: "logs".into(), source })
    }

    fn by_name(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        Ok(self.load(name).map(|r| self.observe(&r)))
    }

    fn spec_hash(&self, comp: &Component) -> Result<String, RuntimeError> {
        Ok(spec_with(comp, self.guest_contents(comp, self.form(comp))?.as_deref()))
    }

    fn address_pool(&self, comp: &Component) -> Option<Pool> {
        net::isolated(comp).then_some(self.pool)
    }

    fn probe_route(&self, id: &str) -> Result<Option<super::ProbeRoute>, RuntimeError> {
        self.probe_route_of(&self.by_id(id)?)
    }

    fn create(&self, service: &str, comp: &Component, spec: &str, assigned: &Assigned) -> Result<String, RuntimeError> {
        let name = instance_name(service, &comp.name);
        let paths = self.paths(&name);
        if paths.record().exists() {
            return Err(RuntimeError::NameInUse { name });
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err(self.dir.display().to_string()))?;
        super::bake::tree::fresh_dir(&paths.dir).map_err(io_err(paths.dir.display().to_string()))?;
        let result = (|| {
            let form = self.form(comp);
            let built = self.build(comp, form, &paths, assigned.address.as_deref())?;
            // The VM is labelled with what was actually baked: when a file changed between the
            // spec hash and the copy, status shows that as drift and the next deploy replaces
            // it, rather than a repair or a deploy failing for it.
            let spec = match built {
                Some(contents) => {
                    let baked = spec_with(comp, Some(&contents));
                    if baked != spec {
                        tracing::warn!(vm = %name, registry = %spec, baked = %baked, "files changed while the VM was built");
                    }
                    baked
                }
                None => spec.to_string(),
            };
            let id = format!("{ID_PREFIX}{}", hex(&format!("{name}\n{}\n{}", now_ms(), std::process::id()), 16));
            let mut rec = VmRecord {
                id: id.clone(),
                name: name.clone(),
                service: service.to_string(),
                component: comp.name.clone(),
                spec,
                created_at: now_ms() / 1000,
                started_at: None,
                comp: comp.clone(),
                form: Some(form),
                accel: self.accel()?,
                address: assigned.address.clone(),
            };
            self.save(&rec)?;
            self.launch(&mut rec)?;
            Ok(id)
        })();
        if result.is_err() {
            if let Some(rec) = self.load(&name) {
                self.net_down(&rec);
            }
            let _ = std::fs::remove_dir_all(&paths.dir);
        }
        result
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut rec = self.by_id(id)?;
        if self.pid(&rec).is_some() {
            return Ok(());
        }
        self.launch(&mut rec)
    }

    fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.shutdown(&self.by_id(id)?)
    }

    fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        let mut rec = self.by_id(id)?;
        self.shutdown(&rec)?;
        self.launch(&mut rec)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let rec = match self.by_id(id) {
            Ok(r) => r,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.shutdown(&rec)?;
        self.net_down(&rec);
        let dir = self.paths(&rec.name).dir;
        std::fs::remove_dir_all(&dir).map_err(io_err(dir.display().to_string()))
    }

    fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError> {
        let mut rec = self.by_id(id)?;
        let (from, to) = (self.paths(&rec.name).dir, self.paths(new_name).dir);
        if to.exists() {
            return Err(RuntimeError::NameInUse { name: new_name.to_string() });
        }
        std::fs::rename(&from, &to).map_err(io_err(format!("renaming {}", from.display())))?;
        // Done: the dir's name is the VM's ([`record::load`]); the record keeps it too when
        // it can be written.
        rec.name = new_name.to_string();
        if let Err(e) = self.save(&rec) {
            tracing::warn!(vm = new_name, error = %e, "renamed, but its record could not be rewritten (its dir names it)");
        }
        Ok(())
    }

    fn state(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        match self.by_id(id) {
            Ok(rec) => {
                let mut o = self.observe(&rec);
                if o.running() {
                    // QMP knows better than the pid whether the guest runs (paused, shutdown).
                    if let Ok(st) = qmp(&self.paths(&rec.name).qmp(), "query-status", Duration::from_secs(2)) {
                        o.state = st["status"].as_str().unwrap_or("running").to_string();
                    }
                }
                Ok(Some(o))
            }
            Err(RuntimeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn by_name_prefix(&self, prefix: &str) -> Result<Vec<Observed>, RuntimeError> {
        Ok(self.list_all()?.into_iter().filter(|o| o.name.starts_with(prefix)).collect())
    }

    fn describe(&self, id: &str, component: &str) -> Result<Component, RuntimeError> {
        let mut c = self.by_id(id)?.comp;
        c.name = component.to_string();
        Ok(c)
    }

    fn tail_logs(&self, id: &str, lines: u32) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(rec) = self.by_id(id) else { return String::new() };
        // The console's end only: a guest may have printed without bound.
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.paths(&rec.name).serial()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
            let _ = f.take(16 * 1024).read_to_end(&mut bytes);
        }
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines as usize)..].join("\n")
    }

    fn settle(&self) -> Duration {
        self.settle
    }
}
