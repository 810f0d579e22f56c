//! `cargo bench --bench monitor`: the agent daemon's reaction time and idle cost.
//!
//! - time from `podman kill` to the drift event in the registry (target <= 1 s), median of 7;
//! - idle RSS and CPU of `mcp-agent serve` over 60 s with 20 services (targets <= 15 MiB,
//!   <= 0.5 %); its `podman events` child is reported on its own line.
//!
//! Not a test: it measures and prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const SERVICES: usize = 20;
const ROUNDS: usize = 7;
const IDLE: Duration = Duration::from_secs(60);

/// Clock ticks of user + system CPU of a process: its own, and that of the children it
/// waited for (the podman calls of its sweeps).
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(4).map(|x| x.parse().unwrap()).collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    (f[0] + f[1], f[2] + f[3])
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let mut names = Vec::new();
    for i in 0..SERVICES {
        let svc = env.svc(&format!("m{i}"));
        env.define(
            &svc,
            &format!("name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"100000\"]\n"),
        );
        env.ok(&["deploy", &svc, "--quiet"]);
        names.push(svc);
    }
    let mut daemon = {
        let child = std::process::Command::new(AGENT)
            .arg("serve")
            .arg("--state-dir")
            .arg(&env.state)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Daemon { child, log: env.dir.path().join("none"), socket: env.state.join("agent.sock") }
    };
    assert!(wait_for(Duration::from_secs(30), || daemon.follower()).is_some());
    let registry = rusqlite::Connection::open_with_flags(env.state.join("registry.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let last_drift = |svc: &str| -> i64 {
        registry
            .query_row("SELECT coalesce(max(id), 0) FROM events WHERE service = ?1 AND kind = 'drift.stopped'", [svc], |r| r.get(0))
            .unwrap()
    };

    let (mut from_issue, mut from_return) = (Vec::new(), Vec::new());
    for svc in names.iter().take(ROUNDS) {
        let before = last_drift(svc);
        let t0 = Instant::now();
        podman_ok(&["kill", &format!("{svc}-web")]);
        let t1 = Instant::now();
        let seen = wait_for_fast(Duration::from_secs(30), || (last_drift(svc) > before).then_some(Instant::now())).expect("drift event");
        from_issue.push(seen - t0);
        from_return.push(seen - t1);
        // Back as desired: the next round starts clean.
        podman_ok(&["start", &format!("{svc}-web")]);
    }
    let med = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!("mcp-agent serve: drift detection, median of {ROUNDS}");
    println!("{:<60} {:>10}", "what", "ms");
    println!("{:<60} {:>10}", "podman kill issued -> drift event in the registry (<= 1000)", ms(med(from_issue.clone())));
    println!("{:<60} {:>10}", "podman kill returned -> drift event in the registry", ms(med(from_return)));
    println!("samples (from issue): {:?}", from_issue.iter().map(|d| ms(*d)).collect::<Vec<_>>());

    // Settle (the repairs above are done by hand; let the last events pass), then measure.
    std::thread::sleep(Duration::from_secs(5));
    let pid = daemon.pid();
    let follower = daemon.follower().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (a0, f0, t0) = (cpu_ticks(pid), cpu_ticks(follower), Instant::now());
    std::thread::sleep(IDLE);
    let (a1, f1, secs) = (cpu_ticks(pid), cpu_ticks(follower), t0.elapsed().as_secs_f64());
    let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
    let mib = |p: u32, field: &str| status_kib(p, field) as f64 / 1024.0;
    println!();
    println!("idle for {:.0} s with {SERVICES} services (default 30 s sweep)", secs);
    println!("{:<52} {:>8} {:>9} {:>7}", "process", "RSS MiB", "peak MiB", "CPU %");
    let line = |what: &str, mem: Option<(f64, f64)>, cpu: f64| match mem {
        Some((rss, peak)) => println!("{what:<52} {rss:>8.1} {peak:>9.1} {cpu:>7.2}"),
        // Short-lived children: only their CPU adds up.
        None => println!("{what:<52} {:>8} {:>9} {cpu:>7.2}", "-", "-"),
    };
    line("mcp-agent serve (target <= 15 MiB, <= 0.5 %)", Some((mib(pid, "VmRSS:"), mib(pid, "VmHWM:"))), pct(a1.0 - a0.0));
    line("  + the podman ps of its sweeps (CPU only)", None, pct(a1.1 - a0.1));
    line("its podman events child", Some((mib(follower, "VmRSS:"), mib(follower, "VmHWM:"))), pct(f1.0 - f0.0));
    daemon.stop();
}

/// Like `wait_for`, polling every 5 ms (the measured latency is the point here).
fn wait_for_fast<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}
