//! Containers through the podman CLI (JSON output). The argv builders are pure and tested to the
//! exact output; [`Podman`] only runs them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use super::{scope_to_service, EventStream, Observed, Runtime, RuntimeError, RuntimeEvent, LABEL_COMPONENT, LABEL_DIGEST, LABEL_SERVICE, LABEL_SPEC};
use crate::plan::{instance_name, Component, PullPolicy};

pub use super::podman_json::{component_from_inspect, parse_inspect, parse_ps};

/// How often `podman rm` is tried when the container's storage is still busy, and how far apart.
const RM_TRIES: u32 = 3;
const RM_RETRY: Duration = Duration::from_millis(500);

/// podman 4.3 sometimes fails to remove a container just killed or stopped: its shm mount is
/// still held by the cleanup of its exit ("unlinkat .../userdata/shm: device or resource busy").
/// Moments later it goes; such a failure decides nothing.
pub fn rm_busy(stderr: &str) -> bool {
    stderr.contains("device or resource busy")
}

/// Remove `env-<pid>-*` files in `scratch` whose process no longer runs.
fn remove_dead_env_files(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("env-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How the agent runs podman. Some hosts need a containers.conf or global flags
/// (e.g. `--runtime runc`, `--cgroup-manager cgroupfs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodmanConfig {
    /// The podman binary; found on PATH when unset.
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// Global flags put before every subcommand.
    #[serde(default)]
    pub args: Vec<String>,
    /// Exported as CONTAINERS_CONF to every podman call.
    #[serde(default)]
    pub containers_conf: Option<PathBuf>,
    /// Milliseconds a replacement must stay running before the old container is dropped.
    #[serde(default)]
    pub settle_ms: Option<u64>,
    /// The registry auth file every podman call reads (`REGISTRY_AUTH_FILE`); the agent sets
    /// `<state dir>/registries/auth.json` unless this names another.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Seconds a pull may take before it is stopped (default 1800).
    #[serde(default)]
    pub pull_timeout_secs: Option<u64>,
    /// Seconds any other podman call may take before it is killed (default 120); stop,
    /// restart and rm get the container's own stop timeout on top.
    #[serde(default)]
    pub call_timeout_secs: Option<u64>,
}

pub const DEFAULT_SETTLE_MS: u64 = 1500;
pub const DEFAULT_CALL_TIMEOUT_SECS: u64 = 120;
/// podman's stop timeout when a container sets none.
const PODMAN_STOP_TIMEOUT: u64 = 10;

/// `podman run -d ...` for a component, minus the global flags. `env_file` carries the
/// environment so that values (possibly secrets) never appear in argv or logs.
pub fn run_argv(service: &str, comp: &Component, spec: &str, digest: Option<&str>, env_file: Option<&Path>) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), instance_name(service, &comp.name)];
    for (k, v) in [(LABEL_SERVICE, service), (LABEL_COMPONENT, comp.name.as_str()), (LABEL_SPEC, spec)].into_iter().chain(digest.map(|d| (LABEL_DIGEST, d))) {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    let mut flag = |name: &str, value: &str| {
        a.push(name.to_string());
        a.push(value.to_string());
    };
    if let Some(n) = &comp.network {
        flag("--network", n);
    }
    if let Some(u) = &comp.user {
        flag("--user", u);
    }
    if let Some(r) = &comp.restart {
        flag("--restart", r);
    }
    if let Some(t) = comp.stop_timeout {
        flag("--stop-timeout", &t.to_string());
    }
    for p in &comp.ports {
        flag("--publish", p);
    }
    for v in &comp.volumes {
        flag("--volume", v);
    }
    if let Some(f) = env_file {
        flag("--env-file", &f.to_string_lossy());
    }
    // `--` is not accepted before the image by podman 4; the image is validated not to start
    // with '-', so it cannot be taken for a flag.
    a.push(comp.image.clone());
    a.extend(comp.cmd.iter().cloned());
    a
}

/// `podman ps` of mcp-labelled containers (all), or of those named `<service>-*` (every
/// container mcp makes for a service is named so; see [`scope_to_service`]).
pub fn ps_argv(service: Option<&str>) -> Vec<String> {
    match service {
        Some(s) => ps_filter_argv(format!("name=^{s}-")),
        None => ps_filter_argv(format!("label={LABEL_SERVICE}")),
    }
}

/// `podman ps` of the container with exactly this name (the filter is a regex).
pub fn ps_name_argv(name: &str) -> Vec<String> {
    ps_filter_argv(format!("name=^{name}$"))
}

/// `podman ps -a` as JSON with one filter.
pub fn ps_filter_argv(filter: String) -> Vec<String> {
    vec!["ps".into(), "-a".into(), "--format".into(), "json".into(), "--filter".into(), filter]
}

/// `podman ps -a` of every container.
pub fn ps_all_argv() -> Vec<String> {
    vec!["ps".into(), "-a".into(), "--format".into(), "json".into()]
}

/// `podman events` for containers, as JSON lines, until killed.
pub fn events_argv() -> Vec<String> {
    vec!["events".into(), "--format".into(), "json".into(), "--filter".into(), "type=container".into()]
}

/// `podman logs` of one container.
pub fn logs_argv(id: &str, tail: Option<u32>, follow: bool) -> Vec<String> {
    let mut a = vec!["logs".to_string()];
    if let Some(n) = tail {
        a.push("--tail".into());
        a.push(n.to_string());
    }
    if follow {
        a.push("--follow".into());
    }
    a.push(id.into());
    a
}

/// Container events that can change what `podman ps` shows; the rest (exec, attach, health,
/// mount, cleanup, ...) are ignored.
const STATE_EVENTS: &[&str] = &["create", "start", "died", "stop", "remove", "rename", "pause", "unpause", "restart"];

/// One line of `podman events --format json`; None for lines that do not change state.
pub fn parse_event(line: &str) -> Option<RuntimeEvent> {
    #[derive(Deserialize)]
    struct EventJson {
        #[serde(rename = "Name", default)]
        name: String,
        #[serde(rename = "Status", default)]
        status: String,
        #[serde(rename = "Type", default)]
        kind: String,
        #[serde(rename = "Attributes", default)]
        attributes: Option<std::collections::BTreeMap<String, String>>,
    }
    let e: EventJson = serde_json::from_str(line.trim()).ok()?;
    if e.kind != "container" || !STATE_EVENTS.contains(&e.status.as_str()) {
        return None;
    }
    Some(RuntimeEvent {
        service: e.attributes.and_then(|a| a.get(LABEL_SERVICE).cloned()),
        name: e.name,
        action: e.status,
    })
}

/// A running `podman events` child.
struct PodmanEvents {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Iterator for PodmanEvents {
    type Item = RuntimeEvent;

    fn next(&mut self) -> Option<RuntimeEvent> {
        loop {
            match self.lines.next()? {
                Ok(line) => {
                    if let Some(e) = parse_event(&line) {
                        return Some(e);
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

impl EventStream for PodmanEvents {
    fn stopper(&self) -> super::Stopper {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        Box::new(move || unsafe {
            libc::kill(pid, libc::SIGTERM);
        })
    }
}

impl Drop for PodmanEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `podman exec ID ARGV...`: podman stops reading its own flags at the container, so an
/// argument starting with '-' goes to the command.
pub fn exec_argv(id: &str, argv: &[String]) -> Vec<String> {
    let mut out = vec!["exec".to_string(), id.to_string()];
    out.extend(argv.iter().cloned());
    out
}

pub fn simple_argv(step: &str, id: &str) -> Vec<String> {
    match step {
        // -t 0 is not used for stop: the container's own stop timeout (from the plan) applies.
        "rm" => vec!["rm".into(), "-f".into(), "-t".into(), "10".into(), id.into()],
        _ => vec![step.to_string(), id.to_string()],
    }
}

/// Classify a failed podman call from its stderr.
fn classify(step: &str, code: i32, stderr: &str) -> RuntimeError {
    let stderr = stderr.trim();
    if stderr.contains("is already in use") {
        if let Some(name) = stderr.split("container name \"").nth(1).and_then(|s| s.split('"').next()) {
            return RuntimeError::NameInUse { name: name.to_string() };
        }
    }
    if let Some(rest) = stderr.split("unable to find network with name or ID ").nth(1) {
        if let Some(network) = rest.split(':').next() {
            return RuntimeError::NetworkMissing { network: network.trim().to_string() };
        }
    }
    // Keep the last lines: pulls print retries before the real error.
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("\n");
    RuntimeError::Exit { program: "podman", step: step.to_string(), code, stderr: tail }
}

pub struct Podman {
    pub(super) config: PodmanConfig,
    program: OnceLock<PathBuf>,
    /// What podman said of images lately (image -> id, digest, when): see [`super::podman_images`].
    pub(super) images: std::sync::Mutex<std::collections::HashMap<String, super::podman_images::Seen>>,
    /// Where env files are written (mode 0600, deleted right after `podman run`).
    scratch: PathBuf,
    /// Stop timeouts of containers (id -> seconds), for the deadline of stop and restart.
    stop_timeouts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Podman {
    pub fn new(config: PodmanConfig, scratch: PathBuf) -> Self {
        Podman { config, program: OnceLock::new(), images: Default::default(), scratch, stop_timeouts: Default::default() }
    }

    fn program(&self) -> Result<&Path, RuntimeError> {
        super::find_program(&self.program, self.config.program.as_deref(), "podman")
    }

    /// `podman <global flags> <args>` with the configured environment, not yet run.
    pub(super) fn command(&self, args: &[String]) -> Result<Command, RuntimeError> {
        let mut cmd = Command::new(self.program()?);
        cmd.args(&self.config.args).args(args).stdin(Stdio::null());
        if let Some(conf) = &self.config.containers_conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        // Once a pull or login made it (podman refuses an auth file that does not exist).
        if let Some(auth) = self.config.auth_file.as_deref().filter(|a| a.exists()) {
            cmd.env("REGISTRY_AUTH_FILE", auth);
        }
        Ok(cmd)
    }

    /// How long one podman call may take (stop, restart and rm: plus the stop timeout).
    pub(super) fn call_limit(&self) -> Duration {
        Duration::from_secs(self.config.call_timeout_secs.unwrap_or(DEFAULT_CALL_TIMEOUT_SECS))
    }

    /// Run podman with `args`, at most the call limit; stdout on success.
    pub(super) fn run(&self, args: &[String]) -> Result<String, RuntimeError> {
        self.run_within(args, self.call_limit())
    }

    /// Run podman with `args`, killed past `limit`; stdout on success.
    pub(super) fn run_within(&self, args: &[String], limit: Duration) -> Result<String, RuntimeError> {
        let step = args.first().cloned().unwrap_or_default();
        let (status, stdout, stderr) = self.call(&step, args, limit, None)?;
        if status.success() {
            Ok(String::from_utf8_lossy(&stdout).into_owned())
        } else {
            Err(classify(&step, status.code().unwrap_or(-1), &String::from_utf8_lossy(&stderr)))
        }
    }

    /// Run podman with `args` (and `input` on its stdin), killed past `limit` (a hung podman
    /// must not hold the agent, the service's lock or the monitor): its exit status, stdout and
    /// stderr; `step` names it in errors.
    pub(super) fn call(&self, step: &str, args: &[String], limit: Duration, input: Option<Vec<u8>>) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), RuntimeError> {
        tracing::debug!(step, "podman");
        let out = super::child::output_with_input(&mut self.command(args)?, limit, input).map_err(|source| self.spawn_error(step, source))?;
        match out.status {
            Some(status) => Ok((status, out.stdout, out.stderr)),
            None => Err(RuntimeError::Hung { program: "podman", step: step.to_string(), secs: limit.as_secs() }),
        }
    }

    /// How long stopping `id` may take: its stop timeout (from its create, else asked of
    /// podman), on top of the call limit.
    fn stop_limit(&self, id: &str) -> Duration {
        let known = self.stop_timeouts.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied();
        let secs = known.unwrap_or_else(|| {
            let inspect = ["inspect".into(), "--type".into(), "container".into(), "--format".into(), "{{.Config.StopTimeout}}".into(), id.into()];
            // A short limit: podman hanging here would hang the stop too (given its own deadline).
            let asked = self.run_within(&inspect, self.call_limit().min(Duration::from_secs(10)));
            let secs = asked.ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(PODMAN_STOP_TIMEOUT);
            self.stop_timeouts.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), secs);
            secs
        });
        self.call_limit() + Duration::from_secs(secs)
    }

    pub(super) fn spawn_error(&self, step: &str, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            program: self.program().map(|p| p.display().to_string()).unwrap_or_default(),
            step: step.to_string(),
            source,
        }
    }

    fn env_file(&self, comp: &Component) -> Result<Option<tempfile::NamedTempFile>, RuntimeError> {
        if comp.env.is_empty() {
            return Ok(None);
        }
        let io = |source| RuntimeError::Io { what: format!("env file in {}", self.scratch.display()), source };
        std::fs::create_dir_all(&self.scratch).map_err(io)?;
        // A process killed while it held one left it behind (it carries secrets): named by
        // the pid that made it, it goes once that process is gone.
        remove_dead_env_files(&self.scratch);
        // tempfile creates with mode 0600.
        let mut f = tempfile::Builder::new().prefix(&format!("env-{}-", std::process::id())).tempfile_in(&self.scratch).map_err(io)?;
        for (k, v) in &comp.env {
            writeln!(f, "{k}={v}").map_err(io)?;
        }
        f.flush().map_err(io)?;
        Ok(Some(f))
    }

    /// Run a `podman ps ... --format json` and parse it.
    fn ps(&self, args: &[String]) -> Result<Vec<Observed>, RuntimeError> {
        let out = self.run(args)?;
        parse_ps(&out).map_err(|message| RuntimeError::Output { program: "podman", step: "ps".into(), message })
    }

    fn ensure_network(&self, network: &str) -> Result<(), RuntimeError> {
        tracing::info!(network, "creating missing podman network");
        match self.run(&["network".into(), "create".into(), network.into()]) {
            // Another deploy (of another service, running concurrently) created it first.
            Err(RuntimeError::Exit { stderr, .. }) if stderr.contains("already exists") => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

impl Runtime for Podman {
    fn list(&self, service: Option<&str>) -> Result<Vec<Observed>, RuntimeError> {
        let found = self.ps(&ps_argv(service))?;
        Ok(match service {
            Some(s) => scope_to_service(found, s),
            None => found,
        })
    }

    fn list_all(&self) -> Result<Vec<Observed>, RuntimeError> {
        self.ps(&ps_all_argv())
    }

    fn watch(&self) -> Result<Box<dyn EventStream>, RuntimeError> {
        let mut cmd = self.command(&events_argv())?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        super::child::die_with_parent(&mut cmd, libc::SIGTERM);
        let mut child = cmd.spawn().map_err(|source| self.spawn_error("events", source))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Box::new(PodmanEvents { child, lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)) }))
    }

    fn logs(&self, id: &str, tail: Option<u32>, follow: bool) -> Result<std::process::Child, RuntimeError> {
        let mut cmd = self.command(&logs_argv(id, tail, follow))?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().map_err(|source| self.spawn_error("logs", source))
    }

    fn by_name(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        Ok(self.ps(&ps_name_argv(name))?.into_iter().find(|o| o.name == name))
    }

    fn create(&self, service: &str, comp: &Component, spec: &str, _assigned: &super::Assigned) -> Result<String, RuntimeError> {
        let env = self.env_file(comp)?;
        let digest = self.digest_of(&comp.image);
        let argv = run_argv(service, comp, spec, digest.as_deref(), env.as_ref().map(|f| f.path()));
        let name = instance_name(service, &comp.name);
        let attempt = |argv: &[String]| match self.run(argv) {
            Ok(out) => Ok(out.trim().to_string()),
            Err(e) => {
                // A failed start can leave a created container behind under the name; never
                // leave it (it would block the next try). NameInUse means the name is someone
                // else's: do not touch it.
                if !matches!(e, RuntimeError::NameInUse { .. }) {
                    let _ = self.run(&simple_argv("rm", &name));
                }
                Err(e)
            }
        };
        let made = match attempt(&argv) {
            Err(RuntimeError::NetworkMissing { network }) if comp.network.as_deref() == Some(network.as_str()) => {
                self.ensure_network(&network)?;
                attempt(&argv)
            }
            other => other,
        }?;
        let stop_timeout = comp.stop_timeout.map_or(PODMAN_STOP_TIMEOUT, u64::from);
        self.stop_timeouts.lock().unwrap_or_else(|p| p.into_inner()).insert(made.clone(), stop_timeout);
        Ok(made)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&simple_argv("start", id)).map(|_| ())
    }

    fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.run_within(&simple_argv("stop", id), self.stop_limit(id)).map(|_| ())
    }

    fn restart(&self, id: &str) -> Result<(), RuntimeError> {
        self.run_within(&simple_argv("restart", id), self.stop_limit(id)).map(|_| ())
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tries = 1;
        loop {
            // `rm -f -t 10`: ten seconds to stop, whatever the container says.
            match self.run_within(&simple_argv("rm", id), self.call_limit() + Duration::from_secs(PODMAN_STOP_TIMEOUT)) {
                Ok(_) => break,
                // A try before may have removed it and failed only in its cleanup.
                Err(RuntimeError::Exit { stderr, .. }) if tries > 1 && stderr.contains("no such container") => break,
                Err(RuntimeError::Exit { stderr, .. }) if tries < RM_TRIES && rm_busy(&stderr) => {
                    tracing::debug!(id, stderr, "podman rm: storage still busy; trying again");
                    tries += 1;
                    std::thread::sleep(RM_RETRY);
                }
                Err(e) => return Err(e),
            }
        }
        self.stop_timeouts.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError> {
        self.run(&["rename".into(), id.into(), new_name.into()]).map(|_| ())
    }

    fn state(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        match self.run(&["inspect".into(), "--type".into(), "container".into(), "--format".into(), "json".into(), id.into()]) {
            Ok(out) => parse_inspect(&out).map_err(|message| RuntimeError::Output { program: "podman", step: "inspect".into(), message }),
            Err(RuntimeError::Exit { stderr, .. }) if stderr.contains("no such") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn by_name_prefix(&self, prefix: &str) -> Result<Vec<Observed>, RuntimeError> {
        let found = self.ps(&ps_filter_argv(format!("name=^{prefix}")))?;
        Ok(found.into_iter().filter(|o| o.name.starts_with(prefix)).collect())
    }

    fn describe(&self, id: &str, component: &str) -> Result<Component, RuntimeError> {
        let out = self.run(&["inspect".into(), "--type".into(), "container".into(), "--format".into(), "json".into(), id.into()])?;
        component_from_inspect(&out, component).map_err(|message| RuntimeError::Output { program: "podman", step: "inspect".into(), message })
    }

    fn tail_logs(&self, id: &str, lines: u32) -> String {
        let Ok(mut cmd) = self.command(&logs_argv(id, Some(lines), false)) else { return String::new() };
        match super::child::output_within(&mut cmd, self.call_limit()) {
            Ok(out) => {
                let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&out.stderr));
                s.trim().to_string()
            }
            Err(_) => String::new(),
        }
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(self.config.settle_ms.unwrap_or(DEFAULT_SETTLE_MS))
    }

    fn exec_check(&self, id: &str, argv: &[String], timeout: Duration) -> Result<Option<String>, RuntimeError> {
        let mut cmd = self.command(&exec_argv(id, argv))?;
        super::child::tie_to_agent(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error("exec", source))?;
        // Bounded: the container decides what it prints.
        let out = super::child::drain_tail(child.stdout.take().expect("piped"), 512);
        let err = super::child::drain_tail(child.stderr.take().expect("piped"), 512);
        let status = super::child::wait_at_most(&mut child, timeout).map_err(super::io_err("wait for podman exec"))?;
        let mut said = out.join().unwrap_or_default();
        said.extend(err.join().unwrap_or_default());
        let said = String::from_utf8_lossy(&said).trim().to_string();
        let said = if said.is_empty() { String::new() } else { format!(": {said}") };
        Ok(match status {
            Some(s) if s.success() => None,
            Some(s) => Some(format!("{} exited with {}{said}", argv[0], s.code().map_or("a signal".into(), |c| format!("status {c}")))),
            None => Some(format!("{} did not finish within {:.1}s", argv[0], timeout.as_secs_f64())),
        })
    }

    fn prepare(&self, comp: &Component, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        self.ensure_image(&comp.image, progress)
    }

    fn resolve(&self, comp: &Component, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        match comp.pull {
            Some(PullPolicy::Always) => self.pull(&comp.image, progress),
            _ => Ok(()),
        }
    }

    /// With `pull = "always"` the image the tag points at is part of the spec: a new one is a
    /// replace, the same one is "unchanged".
    fn spec_hash(&self, comp: &Component) -> Result<String, RuntimeError> {
        let base = crate::plan::spec_hash(comp);
        match comp.pull {
            Some(PullPolicy::Always) => match self.image_id(&comp.image)? {
                Some(id) => Ok(crate::plan::pulled_spec_hash(&base, &id)),
                None => Ok(base),
            },
            _ => Ok(base),
        }
    }

    fn registries(&self) -> Option<&dyn super::Registries> {
        Some(self)
    }

    fn registry_digest(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        self.tag_digest(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_argv_exact() {
        let mut comp = Component {
            name: "api".into(),
            image: "localhost/app:1".into(),
            network: Some("mcpnet".into()),
            user: Some("0:0".into()),
            restart: Some("unless-stopped".into()),
            ports: vec!["127.0.0.1:8443:8443".into()],
            volumes: vec!["/srv/a:/srv/a".into()],
            cmd: vec!["server".into(), "--config".into(), "/srv/a/a.toml".into()],
            stop_timeout: Some(3),
            ..Default::default()
        };
        comp.env.insert("SECRET".into(), "hunter2".into());
        let argv = run_argv("svc", &comp, "abc123", None, Some(Path::new("/state/run/env-x")));
        let expected: Vec<&str> = vec![
            "run", "-d", "--name", "svc-api",
            "--label", "mcp.service=svc", "--label", "mcp.component=api", "--label", "mcp.spec=abc123",
            "--network", "mcpnet", "--user", "0:0", "--restart", "unless-stopped", "--stop-timeout", "3",
            "--publish", "127.0.0.1:8443:8443", "--volume", "/srv/a:/srv/a", "--env-file", "/state/run/env-x",
            "localhost/app:1", "server", "--config", "/srv/a/a.toml",
        ];
        assert_eq!(argv, expected);
        assert!(!argv.iter().any(|a| a.contains("hunter2")), "env values must not be in argv");
        assert!(rm_busy("Error: removing container abc root filesystem: 1 error occurred:\n\t* unlinkat /var/lib/containers/storage/overlay-containers/abc/userdata/shm: device or resource busy"));
        assert!(!rm_busy("Error: no container with name or ID \"x\" found: no such container"));
    }

    #[test]
    fn run_argv_minimal() {
        let comp = Component { name: "w".into(), image: "i".into(), ..Default::default() };
        assert_eq!(
            run_argv("s", &comp, "h", None, None),
            vec!["run", "-d", "--name", "s-w", "--label", "mcp.service=s", "--label", "mcp.component=w", "--label", "mcp.spec=h", "i"]
        );
    }

    #[test]
    fn ps_argvs() {
        assert_eq!(ps_argv(Some("x")), vec!["ps", "-a", "--format", "json", "--filter", "name=^x-"]);
        assert_eq!(ps_argv(None), vec!["ps", "-a", "--format", "json", "--filter", "label=mcp.service"]);
        assert_eq!(ps_name_argv("a-b"), vec!["ps", "-a", "--format", "json", "--filter", "name=^a-b$"]);
        assert_eq!(simple_argv("rm", "id1"), vec!["rm", "-f", "-t", "10", "id1"]);
        assert_eq!(simple_argv("stop", "id1"), vec!["stop", "id1"]);
        assert_eq!(exec_argv("id1", &["/bin/check".into(), "-v".into()]), vec!["exec", "id1", "/bin/check", "-v"]);
    }

    #[test]
    fn parse_ps_output() {
        let json = r#"[{"Id":"abc","Names":["s-w"],"Image":"localhost/x:1","State":"running","StartedAt":100,
            "Labels":{"mcp.service":"s","mcp.component":"w","mcp.spec":"h1"},
            "Ports":[{"host_ip":"127.0.0.1","container_port":80,"host_port":8080,"range":1,"protocol":"tcp"},
                     {"host_ip":"","container_port":53,"host_port":5353,"range":2,"protocol":"udp"}],
            "Command":["sleep","600"],"Mounts":["/data"]},
            {"Id":"def","Names":["other"],"Image":"i","State":"exited","StartedAt":5,"ExitCode":137,"Labels":null,"Ports":null}]"#;
        let got = parse_ps(json).unwrap();
        assert_eq!(got[0].service, "s");
        assert_eq!(got[0].spec.as_deref(), Some("h1"));
        assert_eq!(got[0].started_at, Some(100));
        assert_eq!(got[0].ports, vec!["127.0.0.1:8080->80/tcp", "5353-5354->53-54/udp"]);
        let made = got[0].made.as_ref().unwrap();
        assert_eq!(made.command, vec!["sleep", "600"]);
        assert_eq!(made.mounts, vec!["/data"]);
        let published: Vec<(u16, u16, &str)> = made.ports.iter().map(|p| (p.host_port, p.container_port, p.protocol.as_str())).collect();
        assert_eq!(published, vec![(8080, 80, "tcp"), (5353, 53, "udp"), (5354, 54, "udp")]);
        assert_eq!(got[1].made.as_ref().unwrap().ports, vec![]);
        assert_eq!(got[1].service, "");
        assert_eq!(got[1].started_at, None);
        assert_eq!((got[0].exit_code, got[1].exit_code), (None, Some(137)));
        assert!(parse_ps("").unwrap().is_empty());
        assert!(parse_ps("not json").is_err());
    }

    #[test]
    fn scoping_to_a_service() {
        let o = |name: &str, svc: &str| Observed {
            name: name.into(),
            service: svc.into(),
            component: if svc.is_empty() { String::new() } else { name.rsplit('-').next().unwrap().into() },
            managed: !svc.is_empty(),
            ..Default::default()
        };
        let got = scope_to_service(vec![o("a-web", "a"), o("a-b-web", "a-b"), o("a-legacy", ""), o("zz", "")], "a");
        let names: Vec<(&str, &str, bool)> = got.iter().map(|o| (o.name.as_str(), o.component.as_str(), o.managed)).collect();
        assert_eq!(names, vec![("a-web", "web", true), ("a-legacy", "legacy", false)]);
        // select() over a listing of everything gives what `podman ps` with filters gives.
        let all = vec![o("a-web", "a"), o("a-b-web", "a-b"), o("a-legacy", ""), o("zz", "")];
        assert_eq!(super::super::select(&all, Some("a")), got);
        let managed: Vec<String> = super::super::select(&all, None).into_iter().map(|o| o.name).collect();
        assert_eq!(managed, vec!["a-web", "a-b-web"]);
    }

    #[test]
    fn events_and_logs_argv_and_parsing() {
        assert_eq!(events_argv(), vec!["events", "--format", "json", "--filter", "type=container"]);
        assert_eq!(logs_argv("abc", Some(5), true), vec!["logs", "--tail", "5", "--follow", "abc"]);
        assert_eq!(logs_argv("abc", None, false), vec!["logs", "abc"]);
        let died = r#"{"ContainerExitCode":137,"ID":"89","Image":"i","Name":"s-web","Status":"died","Time":"t","Type":"container","Attributes":{"mcp.service":"s"}}"#;
        assert_eq!(
            parse_event(died),
            Some(RuntimeEvent { name: "s-web".into(), service: Some("s".into()), action: "died".into() })
        );
        let cleanup = died.replace("\"died\"", "\"cleanup\"");
        assert_eq!(parse_event(&cleanup), None, "cleanup does not change state");
        let unlabelled = r#"{"ID":"1","Name":"x","Status":"remove","Type":"container"}"#;
        assert_eq!(parse_event(unlabelled).unwrap().service, None);
        assert_eq!(parse_event("not json"), None);
    }

    #[test]
    fn parse_inspect_output() {
        let json = r#"[{"Id":"abc","Name":"s-w","ImageName":"localhost/x:1","State":{"Status":"running","Pid":4},
            "RestartCount":5,"Config":{"Labels":{"mcp.service":"s","mcp.component":"w","mcp.spec":"h"}}}]"#;
        let o = parse_inspect(json).unwrap().unwrap();
        assert_eq!((o.id.as_str(), o.state.as_str(), o.restarts, o.spec.as_deref()), ("abc", "running", 5, Some("h")));
        assert_eq!(parse_inspect("[]").unwrap(), None);
    }

    #[test]
    fn component_from_podman_inspect() {
        let json = r#"[{"Id":"abc","ImageName":"localhost/mcp-test:latest",
            "Config":{"Cmd":["sleep","300"],"Env":["TERM=xterm","container=podman","FOO=bar","PATH=/bin","HOSTNAME=x"],"User":"0:0","StopTimeout":10},
            "HostConfig":{"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3},
              "PortBindings":{"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"18099"}],"53/udp":[{"HostIp":"","HostPort":"5353"}]},
              "Binds":["/tmp:/hosttmp:ro,rprivate,rbind","/srv/a:/a:rw,rprivate,rbind"],"NetworkMode":"bridge"},
            "NetworkSettings":{"Networks":{"adoptnet":{}}}}]"#;
        let c = component_from_inspect(json, "web").unwrap();
        assert_eq!(c.image, "localhost/mcp-test:latest");
        assert_eq!(c.cmd, vec!["sleep", "300"]);
        assert_eq!(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), vec!["FOO=bar"]);
        assert_eq!(c.user.as_deref(), Some("0:0"));
        assert_eq!(c.restart.as_deref(), Some("on-failure:3"));
        assert_eq!(c.ports, vec!["127.0.0.1:18099:8080", "5353:53/udp"]);
        assert_eq!(c.volumes, vec!["/tmp:/hosttmp:ro", "/srv/a:/a"]);
        assert_eq!(c.network.as_deref(), Some("adoptnet"));
        assert_eq!(c.stop_timeout, None);
        crate::plan::validate(
            &crate::plan::Plan { version: 1, name: "s".into(), node: None, active: true, components: vec![c] },
            "adopted",
        )
        .unwrap();
    }

    #[test]
    fn classify_errors() {
        let e = classify("run", 125, "Error: creating container storage: the container name \"pt2\" is already in use by c5a. You have to remove");
        assert!(matches!(e, RuntimeError::NameInUse { name } if name == "pt2"));
        let e = classify("run", 125, "Error: unable to find network with name or ID nonet: network not found");
        assert!(matches!(e, RuntimeError::NetworkMissing { network } if network == "nonet"));
        let e = classify("run", 127, "a\nb\nc\nError: exec: \"nosuchcmd\": executable file not found");
        match e {
            RuntimeError::Exit { code, stderr, .. } => {
                assert_eq!(code, 127);
                assert!(stderr.starts_with("b\n"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
    }
}
