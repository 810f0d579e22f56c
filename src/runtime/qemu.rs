//! Unikernel components as QEMU VMs. One VM per component, each in its own dir under the
//! agent's state dir (`vms/<service>-<component>/`: `vm.json` with what mcp needs to know and
//! restart it, `pid`, `qmp.sock`, `serial.log`, the baked `initrd.img`, the `staging` tree).
//! VMs run daemonized (`-daemonize`), so they outlive agent restarts like containers do; the
//! agent supervises them by pid (pidfd for exit events) and QMP (status, shutdown).
//!
//! [`qemu_argv`] is pure and tested to the exact output; the rest runs it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bake;
use super::{EventStream, Observed, Runtime, RuntimeError, RuntimeEvent};
use crate::plan::{hex_prefix, instance_name, parse_port, Component};
use crate::registry::now_ms;

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
    /// The `ops` binary (Nanos) that bakes volumes into disk images; found on PATH when unset.
    #[serde(default)]
    pub ops: Option<PathBuf>,
}

/// VM ids start with this, so one id space serves containers and VMs.
pub const ID_PREFIX: &str = "vm-";
const VMS_DIR: &str = "vms";
const RECORD: &str = "vm.json";
const DEFAULT_MEMORY: &str = "256M";
/// Where the kernel form's environment is baked in the guest.
pub const GUEST_ENV_FILE: &str = "/etc/mcp/env";

/// What mcp keeps about one VM (its dir's `vm.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub service: String,
    pub component: String,
    /// The registry's spec hash (labels' equivalent).
    pub spec: String,
    pub created_at: i64,
    /// Unix seconds of the last start.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// What it was created from; argv is rebuilt from it at every start.
    pub comp: Component,
    pub accel: String,
}

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn record(&self) -> PathBuf {
        self.dir.join(RECORD)
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
    /// `OPS_HOME` for the Nanos build of this VM.
    pub fn ops_home(&self) -> PathBuf {
        self.dir.join("ops")
    }
    pub fn ops_config(&self) -> PathBuf {
        self.dir.join("ops-config.json")
    }
    /// Where `ops build -i <name>` leaves the image under [`VmPaths::ops_home`].
    pub fn ops_image(&self) -> PathBuf {
        self.ops_home().join("images").join(OPS_IMAGE)
    }
}

/// The image name given to `ops build`.
pub const OPS_IMAGE: &str = "mcp-baked";

/// Whether the VM's initrd is baked (volumes or environment to bring in).
fn baked(comp: &Component) -> bool {
    comp.kernel.is_some() && (!comp.volumes.is_empty() || !comp.env.is_empty())
}

/// Whether the disk image is rebuilt by `ops` (Nanos form with volumes): the program is
/// `cmd[0]`, the volumes become `Dirs` of the staging root.
fn needs_ops(comp: &Component) -> bool {
    comp.kernel.is_none() && !comp.volumes.is_empty()
}

/// The ops configuration for a Nanos build: the program's arguments and environment, and the
/// staging root's top-level dirs (guest paths mirrored there) as `Dirs`.
pub fn ops_config(comp: &Component, dirs: &[String]) -> serde_json::Value {
    let mut config = serde_json::json!({ "Args": comp.cmd, "Dirs": dirs });
    if !comp.env.is_empty() {
        config["Env"] = serde_json::json!(comp.env);
    }
    config
}

/// `ops build <program> -c <config> -i <image>`, run with the staging root as working dir and
/// `OPS_HOME` in the VM's dir.
pub fn ops_argv(program: &str, config: &Path) -> Vec<String> {
    vec!["build".into(), program.into(), "-c".into(), config.display().to_string(), "-i".into(), OPS_IMAGE.into()]
}

/// The qemu command line (without the program) for `rec` with files in `paths`.
pub fn qemu_argv(rec: &VmRecord, paths: &VmPaths) -> Vec<String> {
    let c = &rec.comp;
    let mut a: Vec<String> = Vec::new();
    fn push(a: &mut Vec<String>, flag: &str, value: String) {
        a.push(flag.to_string());
        a.push(value);
    }
    // `process=` puts the id in the command line: a recycled pid is never taken for the VM.
    push(&mut a, "-name", format!("{},process=mcp-{}", rec.name, rec.id));
    push(&mut a, "-accel", rec.accel.clone());
    push(&mut a, "-m", c.memory.clone().unwrap_or_else(|| DEFAULT_MEMORY.into()));
    push(&mut a, "-smp", c.cpus.unwrap_or(1).to_string());
    a.extend(["-nodefaults", "-no-user-config", "-display", "none"].map(String::from));
    push(&mut a, "-serial", format!("file:{}", paths.serial().display()));
    push(&mut a, "-qmp", format!("unix:{},server=on,wait=off", paths.qmp().display()));
    push(&mut a, "-pidfile", paths.pid().display().to_string());
    a.push("-daemonize".into());
    match &c.kernel {
        Some(kernel) => {
            push(&mut a, "-kernel", kernel.clone());
            if baked(c) {
                push(&mut a, "-initrd", paths.initrd().display().to_string());
            } else if let Some(i) = &c.initrd {
                push(&mut a, "-initrd", i.clone());
            }
            let mut line = String::from("console=ttyS0");
            if let Some(extra) = &c.append {
                line.push(' ');
                line.push_str(extra);
            }
            if !c.cmd.is_empty() {
                line.push_str(" -- ");
                line.push_str(&c.cmd.join(" "));
            }
            push(&mut a, "-append", line);
        }
        None => {
            let image = if needs_ops(c) { paths.ops_image().display().to_string() } else { c.image.clone() };
            push(&mut a, "-drive", format!("file={image},format=raw,if=virtio,snapshot=on"));
        }
    }
    if c.network.as_deref() == Some("user") {
        let mut netdev = String::from("user,id=n0");
        for p in c.ports.iter().filter_map(|p| parse_port(p).ok()) {
            let Some(host) = p.host_port else { continue };
            netdev.push_str(&format!(",hostfwd={}:{}:{host}-:{}", p.proto, p.ip.unwrap_or_default(), p.container_port));
        }
        push(&mut a, "-netdev", netdev);
        push(&mut a, "-device", "virtio-net-pci,netdev=n0".into());
    } else {
        let net = isolated_net(rec);
        push(&mut a, "-netdev", format!("tap,id=n0,ifname={},script=no,downscript=no", net.tap));
        push(&mut a, "-device", format!("virtio-net-pci,netdev=n0,mac={}", net.mac));
    }
    a
}

/// A VM's place on an isolated network: its tap on a bridge with no address on the host (so
/// no route off the host). Components sharing a `network` name share a bridge; without one,
/// each service gets its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolatedNet {
    pub bridge: String,
    pub tap: String,
    pub mac: String,
}

fn hex(input: &str, n: usize) -> String {
    hex_prefix(&Sha256::digest(input.as_bytes()), n)
}

/// Interface names fit Linux's 15 characters; the tap follows the VM's id (stable across
/// renames), the bridge the network (or service) name.
pub fn isolated_net(rec: &VmRecord) -> IsolatedNet {
    let key = match rec.comp.network.as_deref() {
        Some(n) => format!("net:{n}"),
        None => format!("svc:{}", rec.service),
    };
    let m = hex(&format!("mac:{}", rec.id), 6);
    IsolatedNet {
        bridge: format!("mcpb{}", hex(&key, 10)),
        tap: format!("mcpt{}", hex(&rec.id, 10)),
        mac: format!("52:54:00:{}:{}:{}", &m[0..2], &m[2..4], &m[4..6]),
    }
}

/// The `ip` commands that create the bridge (if missing) and the tap on it, in order.
pub fn net_up_argv(net: &IsolatedNet, bridge_exists: bool, tap_exists: bool) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut out = Vec::new();
    // No address on the host side at all, not even IPv6 link-local.
    if !bridge_exists {
        out.push(v(&["link", "add", &net.bridge, "type", "bridge"]));
        out.push(v(&["link", "set", &net.bridge, "addrgenmode", "none"]));
    }
    out.push(v(&["link", "set", &net.bridge, "up"]));
    if !tap_exists {
        out.push(v(&["tuntap", "add", "dev", &net.tap, "mode", "tap"]));
        out.push(v(&["link", "set", &net.tap, "addrgenmode", "none"]));
    }
    out.push(v(&["link", "set", &net.tap, "master", &net.bridge]));
    out.push(v(&["link", "set", &net.tap, "up"]));
    out
}

/// Parse a QMP reply line: Some(Ok(return)) / Some(Err(error)) for answers, None for events
/// and the greeting.
pub fn qmp_reply(line: &str) -> Option<Result<serde_json::Value, String>> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if let Some(r) = v.get("return") {
        return Some(Ok(r.clone()));
    }
    v.get("error").map(|e| Err(e["desc"].as_str().unwrap_or("error").to_string()))
}

/// One QMP command on the VM's socket (after the capabilities handshake).
pub fn qmp(socket: &Path, command: &str, timeout: Duration) -> Result<serde_json::Value, RuntimeError> {
    let fail = |e: std::io::Error| RuntimeError::Io { what: format!("QMP {command} on {}", socket.display()), source: e };
    let stream = UnixStream::connect(socket).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    let mut writer = stream.try_clone().map_err(fail)?;
    let mut lines = BufReader::new(stream).lines();
    let mut ask = |cmd: &str, lines: &mut std::io::Lines<BufReader<UnixStream>>| -> Result<serde_json::Value, RuntimeError> {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}").map_err(fail)?;
        loop {
            let line = lines.next().ok_or_else(|| fail(std::io::ErrorKind::UnexpectedEof.into()))?.map_err(fail)?;
            match qmp_reply(&line) {
                Some(Ok(v)) => return Ok(v),
                Some(Err(desc)) => {
                    return Err(RuntimeError::Exit { program: "qemu", step: format!("qmp {cmd}"), code: 1, stderr: desc })
                }
                None => continue,
            }
        }
    };
    ask("qmp_capabilities", &mut lines)?;
    ask(command, &mut lines)
}

fn alive(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("process=mcp-{id}")))
}

/// The record of the VM `name` under the VMs dir `vms`.
fn load_record(vms: &Path, name: &str) -> Option<VmRecord> {
    let text = std::fs::read_to_string(vms.join(name).join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every VM's record under `vms`, by name.
fn read_records(vms: &Path) -> Vec<VmRecord> {
    let Ok(entries) = std::fs::read_dir(vms) else { return Vec::new() };
    let mut out: Vec<VmRecord> = entries.flatten().filter_map(|e| load_record(vms, &e.file_name().to_string_lossy())).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The VM's qemu process, if it runs.
fn running_pid(vms: &Path, rec: &VmRecord) -> Option<u32> {
    let pid = std::fs::read_to_string(VmPaths { dir: vms.join(&rec.name) }.pid()).ok()?.trim().parse().ok()?;
    alive(pid, &rec.id).then_some(pid)
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

pub struct Qemu {
    config: QemuConfig,
    dir: PathBuf,
    /// Where `auto` keeps its KVM verdict.
    accel_verdict: PathBuf,
    program: OnceLock<PathBuf>,
    settle: Duration,
}

impl Qemu {
    /// VMs live under `<state_dir>/vms`.
    pub fn new(config: QemuConfig, state_dir: &Path, settle: Duration) -> Self {
        Qemu { config, dir: state_dir.join(VMS_DIR), accel_verdict: state_dir.join(super::accel::VERDICT_FILE), program: OnceLock::new(), settle }
    }

    fn program(&self) -> Result<&Path, RuntimeError> {
        super::find_program(&self.program, self.config.program.as_deref(), "qemu-system-x86_64")
    }

    fn paths(&self, name: &str) -> VmPaths {
        VmPaths { dir: self.dir.join(name) }
    }

    fn load(&self, name: &str) -> Option<VmRecord> {
        load_record(&self.dir, name)
    }

    fn save(&self, rec: &VmRecord) -> Result<(), RuntimeError> {
        let p = self.paths(&rec.name).record();
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("records serialize")).map_err(io_err(format!("{}", tmp.display())))?;
        std::fs::rename(&tmp, &p).map_err(io_err(format!("{}", p.display())))
    }

    fn records(&self) -> Vec<VmRecord> {
        read_records(&self.dir)
    }

    fn by_id(&self, id: &str) -> Result<VmRecord, RuntimeError> {
        self.records()
            .into_iter()
            .find(|r| r.id == id || (id.len() >= 6 && r.id.starts_with(id)))
            .ok_or_else(|| RuntimeError::NotFound { kind: "VM", id: id.to_string() })
    }

    fn pid(&self, rec: &VmRecord) -> Option<u32> {
        running_pid(&self.dir, rec)
    }

    fn observe(&self, rec: &VmRecord) -> Observed {
        let running = self.pid(rec).is_some();
        Observed {
            id: rec.id.clone(),
            name: rec.name.clone(),
            service: rec.service.clone(),
            component: rec.component.clone(),
            spec: Some(rec.spec.clone()),
            image: rec.comp.kernel.clone().unwrap_or_else(|| rec.comp.image.clone()),
            state: if running { "running".into() } else { "exited".into() },
            started_at: if running { rec.started_at } else { None },
            ports: rec
                .comp
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
        }
    }

    fn accel(&self) -> Result<String, RuntimeError> {
        let choice = super::accel::choose(&self.config, self.program()?, &self.accel_verdict);
        tracing::debug!(accel = %choice.accel, why = %choice.why, "accelerator for a new VM");
        Ok(choice.accel)
    }

    /// Bake the volumes into a Nanos image with `ops` (staging tree -> `Dirs`).
    fn ops_build(&self, comp: &Component, paths: &VmPaths) -> Result<(), RuntimeError> {
        let wanted = self.config.ops.clone().unwrap_or_else(|| PathBuf::from("ops"));
        let ops = which::which(&wanted).map_err(|_| {
            RuntimeError::Unsupported(format!(
                "baking volumes into a Nanos disk image needs `ops` ({}) on the node, and it is not there; \
                 install ops (https://ops.city) or set [qemu] ops in agent.toml, or use the kernel form",
                wanted.display()
            ))
        })?;
        let staging = paths.staging();
        bake::stage(&bake::binds(&comp.volumes), &staging).map_err(io_err("staging volumes for ops"))?;
        let mut dirs: Vec<String> = std::fs::read_dir(&staging)
            .map_err(io_err(staging.display().to_string()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        let config = paths.ops_config();
        // It may carry the environment (secrets): owner-only, like the VM dir.
        std::fs::write(&config, serde_json::to_vec_pretty(&ops_config(comp, &dirs)).expect("config serializes"))
            .map_err(io_err(config.display().to_string()))?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).map_err(io_err(config.display().to_string()))?;
        let program = comp.cmd.first().cloned().unwrap_or_default();
        let out = Command::new(&ops)
            .args(ops_argv(&program, &config))
            .current_dir(&staging)
            .env("OPS_HOME", paths.ops_home())
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn { program: ops.display().to_string(), step: "build".into(), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(RuntimeError::Exit { program: "ops", step: "build".into(), code: out.status.code().unwrap_or(-1), stderr });
        }
        if !paths.ops_image().exists() {
            return Err(RuntimeError::Unsupported(format!("ops build succeeded but left no image at {}", paths.ops_image().display())));
        }
        Ok(())
    }

    fn ip(&self, args: &[String]) -> Result<String, RuntimeError> {
        let ip = which::which("ip").map_err(|source| RuntimeError::Missing { program: "ip (iproute2)".into(), source })?;
        let out = Command::new(ip)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn { program: "ip".into(), step: args.join(" "), source })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
            return Err(RuntimeError::Unsupported(format!(
                "isolated VM networking needs root or CAP_NET_ADMIN to create its bridge and tap (`ip {}`: {stderr}); \
                 give the agent that capability, or set network = \"user\"",
                args.join(" ")
            )));
        }
        Err(RuntimeError::Exit { program: "ip", step: args.join(" "), code: out.status.code().unwrap_or(-1), stderr })
    }

    fn link_exists(&self, name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }

    /// Bridge and tap for an isolated VM (idempotent).
    fn net_up(&self, rec: &VmRecord) -> Result<(), RuntimeError> {
        if rec.comp.network.as_deref() == Some("user") {
            return Ok(());
        }
        let net = isolated_net(rec);
        for argv in net_up_argv(&net, self.link_exists(&net.bridge), self.link_exists(&net.tap)) {
            self.ip(&argv)?;
        }
        Ok(())
    }

    /// Drop the VM's tap, and its bridge once nothing else is on it.
    fn net_down(&self, rec: &VmRecord) {
        if rec.comp.network.as_deref() == Some("user") {
            return;
        }
        let net = isolated_net(rec);
        if self.link_exists(&net.tap) {
            let _ = self.ip(&["link".into(), "del".into(), net.tap.clone()]);
        }
        let ports = Path::new("/sys/class/net").join(&net.bridge).join("brif");
        if std::fs::read_dir(&ports).is_ok_and(|mut d| d.next().is_none()) {
            let _ = self.ip(&["link".into(), "del".into(), net.bridge.clone()]);
        }
    }

    /// Start the VM described by `rec` (daemonized); records the start time.
    fn launch(&self, rec: &mut VmRecord) -> Result<(), RuntimeError> {
        self.net_up(rec)?;
        let paths = self.paths(&rec.name);
        let _ = std::fs::remove_file(paths.pid());
        let _ = std::fs::remove_file(paths.qmp());
        let argv = qemu_argv(rec, &paths);
        tracing::debug!(vm = %rec.name, "qemu {}", argv.join(" "));
        let program = self.program()?;
        let out = Command::new(program)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| RuntimeError::Spawn { program: program.display().to_string(), step: "start".into(), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(RuntimeError::Exit { program: "qemu", step: format!("start {}", rec.name), code: out.status.code().unwrap_or(-1), stderr });
        }
        rec.started_at = Some(now_ms() / 1000);
        self.save(rec)
    }

    fn wait_gone(&self, rec: &VmRecord, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            if self.pid(rec).is_none() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Graceful: ACPI powerdown, up to the stop timeout; then QMP quit; then SIGKILL.
    fn shutdown(&self, rec: &VmRecord) -> Result<(), RuntimeError> {
        let Some(pid) = self.pid(rec) else { return Ok(()) };
        let qmp_sock = self.paths(&rec.name).qmp();
        let grace = Duration::from_secs(rec.comp.stop_timeout.unwrap_or(10) as u64);
        if !grace.is_zero() && qmp(&qmp_sock, "system_powerdown", Duration::from_secs(5)).is_ok() && self.wait_gone(rec, grace) {
            return Ok(());
        }
        if qmp(&qmp_sock, "quit", Duration::from_secs(5)).is_ok() && self.wait_gone(rec, Duration::from_secs(5)) {
            return Ok(());
        }
        // SAFETY: kill has no memory-safety preconditions; the pid was checked to be this VM.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        if self.wait_gone(rec, Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(RuntimeError::Unsupported(format!("VM {} (pid {pid}) did not stop", rec.name)))
        }
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
        Ok(Box::new(VmEvents { dir: self.dir.clone(), known: HashMap::new(), pending: Vec::new(), primed: false, stop: Default::default() }))
    }

    fn logs(&self, id: &str, tail: Option<u32>, follow: bool) -> Result<std::process::Child, RuntimeError> {
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
        let base = crate::plan::spec_hash(comp);
        if !baked(comp) && !needs_ops(comp) {
            return Ok(base);
        }
        let contents = bake::content_hash(&bake::binds(&comp.volumes)).map_err(io_err("baked volumes"))?;
        Ok(hex(&format!("{base}\nvolumes {contents}"), 16))
    }

    fn create(&self, service: &str, comp: &Component, spec: &str) -> Result<String, RuntimeError> {
        let name = instance_name(service, &comp.name);
        let paths = self.paths(&name);
        if paths.record().exists() {
            return Err(RuntimeError::NameInUse { name });
        }
        std::fs::create_dir_all(&paths.dir).map_err(io_err(paths.dir.display().to_string()))?;
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(paths.dir.display().to_string()))?;
        let result = (|| {
            if baked(comp) {
                bake::stage(&bake::binds(&comp.volumes), &paths.staging()).map_err(io_err(format!("staging volumes for {name}")))?;
                let env: String = comp.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                let extra: Vec<(&str, u32, Vec<u8>)> =
                    if env.is_empty() { Vec::new() } else { vec![(GUEST_ENV_FILE, 0o600, env.into_bytes())] };
                bake::initrd_with(comp.initrd.as_deref().map(Path::new), &paths.staging(), &extra, &paths.initrd())
                    .map_err(io_err(format!("baking the initrd of {name}")))?;
            }
            if needs_ops(comp) {
                self.ops_build(comp, &paths)?;
            }
            let id = format!("{ID_PREFIX}{}", hex(&format!("{name}\n{}\n{}", now_ms(), std::process::id()), 16));
            let mut rec = VmRecord {
                id: id.clone(),
                name: name.clone(),
                service: service.to_string(),
                component: comp.name.clone(),
                spec: spec.to_string(),
                created_at: now_ms() / 1000,
                started_at: None,
                comp: comp.clone(),
                accel: self.accel()?,
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
        rec.name = new_name.to_string();
        self.save(&rec)
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
        let Ok(rec) = self.by_id(id) else { return String::new() };
        let text = std::fs::read_to_string(self.paths(&rec.name).serial()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines as usize)..].join("\n")
    }

    fn settle(&self) -> Duration {
        self.settle
    }
}

/// VM starts and exits: exits come from pidfds (the kernel says when a process ends, without
/// being its parent); new VMs and removed ones from a rescan of the VM dirs twice a second.
struct VmEvents {
    dir: PathBuf,
    /// id -> (name, service, pidfd)
    known: HashMap<String, (String, String, std::os::fd::OwnedFd)>,
    pending: Vec<RuntimeEvent>,
    primed: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const RESCAN: Duration = Duration::from_millis(500);

fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

impl VmEvents {
    fn rescan(&mut self) {
        let mut seen = Vec::new();
        for rec in read_records(&self.dir) {
            seen.push(rec.id.clone());
            if self.known.contains_key(&rec.id) {
                continue;
            }
            if let Some(fd) = running_pid(&self.dir, &rec).and_then(pidfd_open) {
                if self.primed {
                    self.pending.push(RuntimeEvent { name: rec.name.clone(), service: Some(rec.service.clone()), action: "start".into() });
                }
                self.known.insert(rec.id.clone(), (rec.name, rec.service, fd));
            }
        }
        let gone: Vec<String> = self.known.keys().filter(|id| !seen.contains(id)).cloned().collect();
        for id in gone {
            if let Some((name, service, _)) = self.known.remove(&id) {
                self.pending.push(RuntimeEvent { name, service: Some(service), action: "remove".into() });
            }
        }
        self.primed = true;
    }
}

impl Iterator for VmEvents {
    type Item = RuntimeEvent;

    fn next(&mut self) -> Option<RuntimeEvent> {
        loop {
            if let Some(e) = self.pending.pop() {
                return Some(e);
            }
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            self.rescan();
            if !self.pending.is_empty() {
                continue;
            }
            let ids: Vec<String> = self.known.keys().cloned().collect();
            let mut fds: Vec<libc::pollfd> = ids
                .iter()
                .map(|id| libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&self.known[id].2), events: libc::POLLIN, revents: 0 })
                .collect();
            if fds.is_empty() {
                std::thread::sleep(RESCAN);
                continue;
            }
            // SAFETY: fds is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, RESCAN.as_millis() as i32) };
            if n > 0 {
                for (i, p) in fds.iter().enumerate() {
                    if p.revents != 0 {
                        if let Some((name, service, _)) = self.known.remove(&ids[i]) {
                            self.pending.push(RuntimeEvent { name, service: Some(service), action: "died".into() });
                        }
                    }
                }
            }
        }
    }
}

impl EventStream for VmEvents {
    fn stopper(&self) -> super::Stopper {
        let stop = self.stop.clone();
        // Seen within one rescan interval.
        Box::new(move || stop.store(true, std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(comp: Component) -> VmRecord {
        VmRecord {
            id: "vm-0123456789abcdef".into(),
            name: "svc-vm".into(),
            service: "svc".into(),
            component: "vm".into(),
            spec: "h".into(),
            created_at: 0,
            started_at: None,
            comp,
            accel: "tcg".into(),
        }
    }

    #[test]
    fn qemu_argv_kernel_form_exact() {
        let mut comp = Component {
            name: "vm".into(),
            kind: crate::plan::Kind::Unikernel,
            kernel: Some("/k/vmlinuz".into()),
            initrd: Some("/k/initrd.gz".into()),
            append: Some("quiet".into()),
            network: Some("user".into()),
            ports: vec!["127.0.0.1:18080:8080".into(), "9000:9000/udp".into()],
            volumes: vec!["/srv/www:/srv/www".into()],
            cmd: vec!["serve".into(), "--port=8080".into()],
            memory: Some("128M".into()),
            cpus: Some(2),
            ..Default::default()
        };
        comp.env.insert("SECRET".into(), "hunter2".into());
        let paths = VmPaths { dir: "/state/vms/svc-vm".into() };
        let argv = qemu_argv(&rec(comp), &paths);
        let expected: Vec<&str> = vec![
            "-name", "svc-vm,process=mcp-vm-0123456789abcdef", "-accel", "tcg", "-m", "128M", "-smp", "2",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "file:/state/vms/svc-vm/serial.log",
            "-qmp", "unix:/state/vms/svc-vm/qmp.sock,server=on,wait=off",
            "-pidfile", "/state/vms/svc-vm/pid", "-daemonize",
            "-kernel", "/k/vmlinuz", "-initrd", "/state/vms/svc-vm/initrd.img",
            "-append", "console=ttyS0 quiet -- serve --port=8080",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=udp::9000-:9000",
            "-device", "virtio-net-pci,netdev=n0",
        ];
        assert_eq!(argv, expected);
        assert!(!argv.iter().any(|a| a.contains("hunter2")), "env is baked, never in argv");
    }

    #[test]
    fn qemu_argv_image_form_and_defaults() {
        let comp = Component { name: "vm".into(), kind: crate::plan::Kind::Unikernel, image: "/nix/store/x.img".into(), ..Default::default() };
        let argv = qemu_argv(&rec(comp), &VmPaths { dir: "/d".into() });
        let s = argv.join(" ");
        assert!(s.contains("-m 256M -smp 1"), "{s}");
        assert!(s.contains("-drive file=/nix/store/x.img,format=raw,if=virtio,snapshot=on"), "{s}");
        assert!(s.contains("-netdev tap,id=n0,ifname=mcpt"), "isolated by default: {s}");
        // Unbaked kernel form keeps the given initrd.
        let k = Component { name: "vm".into(), kind: crate::plan::Kind::Unikernel, kernel: Some("/k".into()), initrd: Some("/i".into()), ..Default::default() };
        let s = qemu_argv(&rec(k), &VmPaths { dir: "/d".into() }).join(" ");
        assert!(s.contains("-kernel /k -initrd /i -append console=ttyS0"), "{s}");
    }

    #[test]
    fn isolated_network_names_and_commands() {
        let mut comp = Component { name: "vm".into(), kind: crate::plan::Kind::Unikernel, kernel: Some("/k".into()), ..Default::default() };
        let own = isolated_net(&rec(comp.clone()));
        assert!(own.bridge.starts_with("mcpb") && own.bridge.len() == 14, "{own:?}");
        assert!(own.tap.starts_with("mcpt") && own.tap.len() <= 15);
        assert!(own.mac.starts_with("52:54:00:") && own.mac.len() == 17);
        comp.network = Some("backend".into());
        let shared = isolated_net(&rec(comp.clone()));
        let mut other = rec(comp.clone());
        other.service = "other".into();
        other.id = "vm-ffff".into();
        assert_eq!(isolated_net(&other).bridge, shared.bridge, "one network name, one bridge");
        assert_ne!(shared.bridge, own.bridge);
        assert_ne!(isolated_net(&other).tap, shared.tap);
        let argv = qemu_argv(&rec(comp), &VmPaths { dir: "/d".into() }).join(" ");
        assert!(argv.contains(&format!("-netdev tap,id=n0,ifname={},script=no,downscript=no", shared.tap)), "{argv}");
        let cmds: Vec<String> = net_up_argv(&shared, false, false).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            cmds,
            vec![
                format!("link add {} type bridge", shared.bridge),
                format!("link set {} addrgenmode none", shared.bridge),
                format!("link set {} up", shared.bridge),
                format!("tuntap add dev {} mode tap", shared.tap),
                format!("link set {} addrgenmode none", shared.tap),
                format!("link set {} master {}", shared.tap, shared.bridge),
                format!("link set {} up", shared.tap),
            ]
        );
        assert_eq!(net_up_argv(&shared, true, true).len(), 3, "existing links are not created again");
    }

    #[test]
    fn ops_invocation_and_config() {
        let mut comp = Component {
            name: "vm".into(),
            kind: crate::plan::Kind::Unikernel,
            image: "/nix/store/x-app.img".into(),
            volumes: vec!["/srv/app:/srv/app".into()],
            cmd: vec!["/opt/app/server".into(), "--port".into(), "8080".into()],
            network: Some("user".into()),
            ..Default::default()
        };
        comp.env.insert("MODE".into(), "prod".into());
        assert_eq!(
            ops_argv("/opt/app/server", Path::new("/state/vms/s-vm/ops-config.json")),
            vec!["build", "/opt/app/server", "-c", "/state/vms/s-vm/ops-config.json", "-i", "mcp-baked"]
        );
        assert_eq!(
            ops_config(&comp, &["srv".into()]),
            serde_json::json!({"Args": ["/opt/app/server", "--port", "8080"], "Dirs": ["srv"], "Env": {"MODE": "prod"}})
        );
        let argv = qemu_argv(&rec(comp), &VmPaths { dir: "/state/vms/s-vm".into() }).join(" ");
        assert!(argv.contains("-drive file=/state/vms/s-vm/ops/images/mcp-baked,format=raw"), "{argv}");
    }

    #[test]
    fn qmp_replies() {
        assert_eq!(qmp_reply(r#"{"QMP": {"version": {}}}"#), None);
        assert_eq!(qmp_reply(r#"{"return": {}}"#), Some(Ok(serde_json::json!({}))));
        assert_eq!(qmp_reply(r#"{"event": "SHUTDOWN"}"#), None);
        assert_eq!(qmp_reply(r#"{"error": {"class": "x", "desc": "nope"}}"#), Some(Err("nope".into())));
    }
}
