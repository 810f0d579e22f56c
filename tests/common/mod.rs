//! Test harness: real binaries, real podman, a private state dir and config per test, names
//! unique per test, and cleanup of every container the test made, by id.
#![allow(dead_code)]

pub mod guest;
pub mod nanos;
pub mod registry;
pub mod sshd;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "localhost/mcp-test:latest";
pub const MCP: &str = env!("CARGO_BIN_EXE_mcp");
pub const AGENT: &str = env!("CARGO_BIN_EXE_mcp-agent");

/// A command that serves /www on 8080 and exits at once on SIGTERM (sh as PID 1 with a trap).
pub const HTTPD_CMD: &str = r#"["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]"#;

static IMAGE_ONCE: Once = Once::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("podman runs")
}

pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Build the test image from busybox-static (no registry here): busybox, sh, httpd and a page.
pub fn ensure_image() {
    IMAGE_ONCE.call_once(|| {
        if podman(&["image", "exists", IMAGE]).status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("www")).unwrap();
        std::fs::copy(which::which("busybox").expect("busybox-static is installed"), root.join("bin/busybox")).unwrap();
        for tool in ["sh", "httpd", "sleep", "cat", "echo", "env"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
        }
        std::fs::write(root.join("www/index.html"), "hello from the test image\n").unwrap();
        let tar = dir.path().join("img.tar");
        let st = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success());
        podman_ok(&["import", "-q", tar.to_str().unwrap(), IMAGE]);
    });
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET / on 127.0.0.1:port until it answers 200 or the deadline passes; the body.
pub fn http_get(port: u16, deadline: Duration) -> Option<String> {
    http_get_path(port, "/", deadline)
}

/// GET `path` on 127.0.0.1:port until it answers 200 or the deadline passes; the body.
pub fn http_get_path(port: u16, path: &str, deadline: Duration) -> Option<String> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).is_ok() {
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.") && buf.contains(" 200 ") {
                    return buf.split("\r\n\r\n").nth(1).map(str::to_string);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// One test's world: temp dir, mcp.toml, services dir, agent state dir, podman call log.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub state: PathBuf,
    pub services: PathBuf,
    pub config: PathBuf,
    /// Every podman call the agent makes is appended here (through a logging wrapper).
    pub podman_log: PathBuf,
    /// HOME for mcp: ~/.ssh (known_hosts, identities) and ~/.config/mcp are private to the test.
    pub home: PathBuf,
    /// Extra environment for mcp (e.g. SSH_AUTH_SOCK).
    pub extra_env: RefCell<Vec<(String, String)>>,
    services_made: RefCell<Vec<String>>,
    /// The wrapper runs `sleep <this>` instead of a subcommand while `<dir>/hang-<subcommand>`
    /// exists (see [`Env::hang`]); unique, so the test finds its hung calls.
    hang_marker: String,
}

impl Env {
    pub fn new() -> Env {
        ensure_image();
        let dir = tempfile::tempdir().unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("t{}x{n}", std::process::id());
        let state = dir.path().join("state");
        let services = dir.path().join("services");
        std::fs::create_dir_all(&services).unwrap();
        let podman_log = dir.path().join("podman.log");
        let wrapper = dir.path().join("podman-logged");
        let hang_marker = format!("600.{}{n}", std::process::id());
        std::fs::write(
            &wrapper,
            format!(
                // A hung call forks its sleep and waits, as rootless podman waits for the copy of
                // itself it re-executed (which dies with it): killing only the first process at a
                // deadline would leave the sleep.
                "#!/bin/sh\necho \"$*\" >> '{}'\nif [ -e '{d}/hang-'\"$1\" ]; then setpriv --pdeathsig KILL sleep {hang_marker} & wait; exit 1; fi\n\
                 if [ -e '{d}/hold-'\"$1\" ]; then sleep {hang_marker} & wait; exit 1; fi\n\
                 while [ -e '{d}/gate-'\"$1\" ]; do sleep 0.05; done\n\
                 if [ -e '{d}/slow-'\"$1\" ]; then sleep 5; fi\n\
                 if [ -e '{d}/fail-after-'\"$1\" ]; then podman \"$@\"; echo 'Error: injected failure' >&2; exit 125; fi\n\
                 if [ -e '{d}/fail-nth-'\"$1\" ]; then k=$(( $(cat '{d}/count-'\"$1\" 2>/dev/null || echo 0) + 1 )); echo $k > '{d}/count-'\"$1\"; \
                 if [ $k -eq $(cat '{d}/fail-nth-'\"$1\") ]; then echo 'Error: injected transient failure' >&2; exit 125; fi; fi\n\
                 if [ -e '{d}/flaky' ] && [ \"$1\" != events ]; then read pct seed < '{d}/flaky'; n=$(( $(cat '{d}/flaky.n' 2>/dev/null || echo 0) + 1 )); echo $n > '{d}/flaky.n'; \
                 r=$(( (n * 2654435761 + seed) % 100 )); if [ $r -lt $pct ]; then if [ $((r % 2)) -eq 1 ]; then podman \"$@\"; fi; echo \"Error: injected flaky failure $n\" >&2; exit 125; fi; fi\n\
                 exec podman \"$@\"\n",
                podman_log.display(),
                d = dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = dir.path().join("mcp.toml");
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let env = Env {
            dir,
            prefix,
            state,
            services,
            config,
            podman_log,
            home,
            extra_env: RefCell::new(Vec::new()),
            services_made: RefCell::new(Vec::new()),
            hang_marker,
        };
        env.write_config(&format!(
            "{AGENT} rpc --state-dir {} --podman {}",
            env.state.display(),
            wrapper.display()
        ));
        env
    }

    pub fn write_config(&self, agent_cmd: &str) {
        std::fs::write(
            &self.config,
            format!(
                "[services]\ndir = \"{}\"\n\n[[nodes]]\nname = \"local\"\naddress = \"local\"\nagent = \"{agent_cmd}\"\n",
                self.services.display()
            ),
        )
        .unwrap();
    }

    /// Replace mcp.toml with `text`.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// A service name unique to this test (cleaned up at the end).
    pub fn svc(&self, base: &str) -> String {
        let name = format!("{}-{base}", self.prefix);
        self.services_made.borrow_mut().push(name.clone());
        name
    }

    /// Write `services/<name>.toml`.
    pub fn define(&self, name: &str, body: &str) -> PathBuf {
        let p = self.services.join(format!("{name}.toml"));
        std::fs::write(&p, body).unwrap();
        p
    }

    pub fn mcp(&self, args: &[&str]) -> Run {
        self.mcp_in(args, self.dir.path())
    }

    /// `mcp ...` with `input` on its stdin.
    pub fn mcp_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut cmd = Command::new(MCP);
        cmd.arg("--config").arg(&self.config).args(args).current_dir(self.dir.path());
        cmd.env("HOME", &self.home).env("XDG_CONFIG_HOME", self.home.join(".config")).env_remove("SSH_AUTH_SOCK");
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn mcp_in(&self, args: &[&str], cwd: &Path) -> Run {
        let mut cmd = Command::new(MCP);
        cmd.arg("--config").arg(&self.config).args(args).current_dir(cwd);
        cmd.env("HOME", &self.home).env("XDG_CONFIG_HOME", self.home.join(".config")).env_remove("SSH_AUTH_SOCK");
        for (k, v) in self.extra_env.borrow().iter() {
            cmd.env(k, v);
        }
        let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// From now on the agent's `podman <subcommand>` hangs (a `sleep` that never ends).
    pub fn hang(&self, subcommand: &str) {
        std::fs::write(self.dir.path().join(format!("hang-{subcommand}")), "").unwrap();
    }

    /// From now on the agent's `podman <subcommand>` hangs in a child that holds its pipes and
    /// outlives it (as the copy of itself rootless podman re-executes may): only a kill of
    /// its process group ends it.
    pub fn hold(&self, subcommand: &str) {
        std::fs::write(self.dir.path().join(format!("hold-{subcommand}")), "").unwrap();
    }

    /// From now on the agent's `podman <subcommand>` waits until [`Env::release`], then does
    /// its work.
    pub fn gate(&self, subcommand: &str) {
        std::fs::write(self.dir.path().join(format!("gate-{subcommand}")), "").unwrap();
    }

    /// From now on the agent's `podman <subcommand>` does its work, then reports a failure.
    pub fn fail_after(&self, subcommand: &str) {
        std::fs::write(self.dir.path().join(format!("fail-after-{subcommand}")), "").unwrap();
    }

    /// From now on the agent's `podman <subcommand>` waits 5 s before it does its work.
    pub fn slow(&self, subcommand: &str) {
        std::fs::write(self.dir.path().join(format!("slow-{subcommand}")), "").unwrap();
    }

    /// From now on `pct` % of the agent's podman calls (all but `events`) fail, chosen by a
    /// counter and `seed` (the same seed fails the same calls): half of them before doing
    /// anything, half after doing their work. [`Env::steady`] ends it.
    pub fn flaky(&self, pct: u32, seed: u64) {
        std::fs::write(self.dir.path().join("flaky"), format!("{pct} {seed}\n")).unwrap();
    }

    /// From now on the `n`th call of `podman <subcommand>` (counted from here) fails without
    /// doing anything; the others work.
    pub fn fail_nth(&self, subcommand: &str, n: u32) {
        let _ = std::fs::remove_file(self.dir.path().join(format!("count-{subcommand}")));
        std::fs::write(self.dir.path().join(format!("fail-nth-{subcommand}")), n.to_string()).unwrap();
    }

    pub fn steady(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("flaky"));
    }

    /// `podman <subcommand>` works again (calls already hung stay hung).
    pub fn release(&self, subcommand: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(format!("hang-{subcommand}")));
        let _ = std::fs::remove_file(self.dir.path().join(format!("hold-{subcommand}")));
        let _ = std::fs::remove_file(self.dir.path().join(format!("gate-{subcommand}")));
        let _ = std::fs::remove_file(self.dir.path().join(format!("slow-{subcommand}")));
        let _ = std::fs::remove_file(self.dir.path().join(format!("fail-after-{subcommand}")));
    }

    /// Kill what is left of this test's hung podman calls.
    pub fn kill_hung_podman(&self) {
        let needle = format!("sleep {} ", self.hang_marker);
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                if cmdline_of(pid as i32).contains(&needle) {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Whether a hung podman call of this test still runs.
    pub fn hung_podman(&self) -> bool {
        process_running(&format!("sleep {} ", self.hang_marker))
    }

    /// `mcp ...` that must succeed.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.mcp(args);
        assert_eq!(r.code, 0, "mcp {args:?} failed:\nstdout: {}\nstderr: {}", r.stdout, r.stderr);
        r
    }

    pub fn podman_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.podman_log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn clear_podman_log(&self) {
        let _ = std::fs::remove_file(&self.podman_log);
    }

    /// Calls that change something (anything but ps/inspect/logs/image exists...).
    pub fn podman_mutations(&self) -> Vec<String> {
        self.podman_calls()
            .into_iter()
            .filter(|c| !(c.starts_with("ps ") || c.starts_with("inspect ") || c.starts_with("logs ")))
            .collect()
    }

    /// The podman the agent runs (a wrapper that logs every call).
    pub fn podman_wrapper(&self) -> PathBuf {
        self.dir.path().join("podman-logged")
    }

    /// Start `mcp-agent serve` on this test's state dir (the `mcp` of this Env then reaches it
    /// through `mcp-agent rpc`). `extra` are more agent flags (e.g. `--sweep-secs 1`).
    pub fn start_daemon(&self, extra: &[&str]) -> Daemon {
        let log = self.dir.path().join(format!("serve-{}.log", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let child = Command::new(AGENT)
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--podman")
            .arg(self.podman_wrapper())
            .args(extra)
            .arg("-v")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("mcp-agent serve starts");
        let d = Daemon { child, log, socket: self.state.join("agent.sock") };
        let up = wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&d.socket).ok().map(|_| ())
        });
        assert!(up.is_some(), "the daemon did not listen; log:\n{}", d.log_text());
        // Followed by its event stream (before that, changes are only seen by sweeps).
        assert!(wait_for(Duration::from_secs(20), || d.follower()).is_some(), "no event follower; log:\n{}", d.log_text());
        d
    }

    /// The events of `service` (kind, message), oldest first, through `mcp status --json`.
    pub fn events(&self, service: &str) -> Vec<(String, String)> {
        let st = self.ok(&["status", service, "--json", "--events", "1000"]).json();
        st["nodes"][0]["result"]["services"][0]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| (e["kind"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string()))
            .collect()
    }

    /// How many events of `service` have `kind`.
    pub fn count_events(&self, service: &str, kind: &str) -> usize {
        self.events(service).iter().filter(|(k, _)| k == kind).count()
    }

    /// Poll the service's events until one of `kind` is there (its message), or the deadline.
    pub fn wait_event(&self, service: &str, kind: &str, deadline: Duration) -> Option<String> {
        wait_for(deadline, || self.events(service).into_iter().find(|(k, _)| k == kind).map(|(_, m)| m))
    }

    /// Container id under a name, if any.
    pub fn container_id(&self, name: &str) -> Option<String> {
        let out = podman_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("name=^{name}$")]);
        out.lines().next().map(str::to_string)
    }

    pub fn container_state(&self, name: &str) -> Option<String> {
        self.container_id(name)?;
        Some(podman_ok(&["inspect", "--format", "{{.State.Status}}", name]))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // VMs this test's agent started: by the pid each recorded.
        if let Ok(vms) = std::fs::read_dir(self.state.join("vms")) {
            for vm in vms.flatten() {
                if let Some(pid) = std::fs::read_to_string(vm.path().join("pid")).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains("process=mcp-vm-") {
                        signal(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let mut ids = Vec::new();
        for svc in self.services_made.borrow().iter() {
            let out = podman(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("label=mcp.service={svc}")]);
            ids.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
        }
        // Unmanaged containers a test made itself carry the prefix in their name.
        let out = podman(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("name=^{}-", self.prefix)]);
        ids.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(ids.iter().map(String::as_str));
            let _ = podman(&args);
        }
    }
}

/// `mcp <args>` started in its own process group (as a shell runs a foreground job),
/// returned once a line of its progress contains `marker` (its stderr drained from then on).
pub fn mcp_until(env: &Env, args: &[&str], marker: &str) -> std::process::Child {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(MCP)
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env("HOME", &env.home)
        .current_dir(env.dir.path())
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "mcp {args:?} ended before saying {marker:?}: {seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

/// Running and not a zombie (daemonized qemu is reparented to PID 1, which here does not reap).
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The command line of process `pid`, arguments joined by spaces.
pub fn cmdline_of(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// The running qemu of VM `name` (`<service>-<component>`) of this test's agent.
pub fn vm_pid(env: &Env, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(env.state.join("vms").join(name).join("pid")).ok()?.trim().parse().ok()?;
    process_alive(pid).then_some(pid)
}

/// What every unikernel form must do from a running VM `name` of service `svc` (restart
/// policy "always", answering `body` on `port`): `stop` returns once qemu is gone, leaves
/// desired stopped with no drift (`while_stopped` then gets how long stop took); `start`
/// serves again; `restart` is a new qemu; with the daemon, qemu SIGKILLed is drift, repaired,
/// serving again.
pub fn vm_lifecycle(env: &Env, svc: &str, name: &str, port: u16, body: &str, deadline: Duration, while_stopped: impl FnOnce(Duration)) {
    let pid = vm_pid(env, name).expect("a running VM");
    let started = Instant::now();
    env.ok(&["stop", svc]);
    let took = started.elapsed();
    assert!(!process_alive(pid), "qemu still runs after stop returned");
    let st = env.ok(&["status", svc, "--json"]).json();
    let c = &st["nodes"][0]["result"]["services"][0]["components"][0];
    assert_eq!((c["desired"].as_str(), c["observed"].as_str()), (Some("stopped"), Some("exited")), "{st}");
    assert!(c["drift"].is_null(), "{st}");
    while_stopped(took);
    env.ok(&["start", svc]);
    assert_eq!(http_get(port, deadline).as_deref(), Some(body));
    // restart: the same VM (same id and dir), a new qemu process.
    let pid = vm_pid(env, name).unwrap();
    let out = env.ok(&["restart", svc, "--json"]).json();
    assert_eq!(out["result"]["changes"][0]["change"], "restarted", "{out}");
    assert!(!process_alive(pid));
    assert_eq!(http_get(port, deadline).as_deref(), Some(body));

    let _daemon = env.start_daemon(&[]);
    let pid = vm_pid(env, name).unwrap();
    signal(pid as u32, libc::SIGKILL);
    let m = env.wait_event(svc, "repair", deadline).expect("repair of the killed VM");
    assert!(m.contains("restarted"), "{m}");
    assert!(env.count_events(svc, "drift.stopped") >= 1);
    assert_eq!(http_get(port, deadline).as_deref(), Some(body));
    assert_ne!(vm_pid(env, name), Some(pid));
}

/// A network namespace this test made (`ip netns add`), deleted when dropped.
pub struct Netns(String);

impl Netns {
    pub fn new(name: &str) -> Netns {
        assert!(Command::new("ip").args(["netns", "add", name]).status().unwrap().success(), "ip netns add {name}");
        Netns(name.to_string())
    }

    pub fn name(&self) -> String {
        self.0.clone()
    }

    /// The probe namespaces an agent inside this one made (`mcp-probe-<bridge>-<our inode>`).
    pub fn probe_namespaces(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let Ok(ino) = std::fs::metadata(format!("/run/netns/{}", self.0)).map(|m| m.ino()) else { return vec![] };
        let mut found: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        found.retain(|n| n.starts_with("mcp-probe-") && n.ends_with(&format!("-{ino}")));
        found
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for probe in self.probe_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Isolated networks, seen from guests that probe a peer once a second ("probe ok: <body>" or
/// "probe failed" on their console): `friend` gets `body` through, `stranger` keeps failing.
pub fn assert_reachability(env: &Env, friend: &str, stranger: &str, body: &str, deadline: Duration) {
    let friend_ok = wait_for(deadline, || env.ok(&["logs", friend]).stdout.contains(&format!("probe ok: {body}")).then_some(()));
    assert!(friend_ok.is_some(), "same network: reachable; logs: {}", env.ok(&["logs", friend]).stdout);
    // The stranger is up and probing (it says "failed") but never gets through.
    let stranger_tried = wait_for(deadline, || {
        let l = env.ok(&["logs", stranger]).stdout;
        (l.matches("probe failed").count() >= 3).then_some(l)
    })
    .expect("the stranger's probe runs");
    assert!(!stranger_tried.contains("probe ok"), "{stranger_tried}");
}

/// Poll `f` until it gives Some or the deadline passes.
pub fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `mcp-agent serve`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of its `podman events` child, if one runs.
    pub fn follower(&self) -> Option<u32> {
        children_of(self.pid()).into_iter().find(|(_, cmd)| cmd.contains("events")).map(|(pid, _)| pid)
    }

    /// SIGTERM and wait for the exit; the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Direct children of `pid` with their command lines.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // Field 4 (ppid) follows the parenthesized command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            let cmd = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// Whether any process's command line contains `needle`.
pub fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().parse::<u32>().is_ok()
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
    })
}

/// `podman run -d` by hand of the container [`http_service`] describes (name, port, `image`,
/// the httpd command): what the benchmarks compare mcp with.
pub fn podman_run_http(name: &str, port: u16, image: &str) {
    let cmd: Vec<String> = serde_json::from_str(HTTPD_CMD).unwrap();
    let st = Command::new("podman")
        .args(["run", "-d", "--name", name, "-p", &format!("127.0.0.1:{port}:8080"), image])
        .args(&cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "podman run -d {name}");
}

/// A one-component HTTP service definition on `port`.
pub fn http_service(name: &str, port: u16, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnode = \"local\"\n\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{port}:8080\"]\ncmd = {HTTPD_CMD}\n{extra}\n"
    )
}
