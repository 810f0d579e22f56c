//! `cargo bench --bench storm`: 50 services killed at once (a podman crash, an OOM sweep) and
//! the daemon's restart policy bringing them back: time until every one runs again, repair
//! events per service (exactly one each), and the daemon's peak memory. The fault run of #17
//! measured, before its fixes: all back in 17-20 s, one event each, 8 MB RSS; this must not
//! get slower.
//!
//! Not a test: it measures and prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const SERVICES: usize = 50;

fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    let names: Vec<String> = (0..SERVICES).map(|i| env.svc(&format!("s{i}"))).collect();
    for svc in &names {
        env.define(
            svc,
            &format!("name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"100000\"]\nrestart = \"always\"\nstop_timeout = 0\n"),
        );
    }
    let t = Instant::now();
    env.ok(&["sync", "--quiet"]);
    let synced = t.elapsed();
    let mut daemon = env.start_daemon(&[]);
    assert!(wait_for(Duration::from_secs(30), || daemon.follower()).is_some());
    let registry = rusqlite::Connection::open_with_flags(env.state.join("registry.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let last_event: i64 = registry.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0)).unwrap();
    let containers: Vec<String> = names.iter().map(|s| format!("{s}-web")).collect();
    let mut kill = vec!["kill"];
    kill.extend(containers.iter().map(String::as_str));
    let t0 = Instant::now();
    podman_ok(&kill);
    let killed = t0.elapsed();
    let running = || {
        let out = podman_ok(&["ps", "--format", "{{.Names}}", "--filter", &format!("name=^{}-", env.prefix)]);
        out.lines().filter(|n| containers.iter().any(|c| c == n)).count()
    };
    // Every container running again, each after a repair the daemon recorded.
    let repaired = || -> usize {
        registry
            .query_row(
                "SELECT count(DISTINCT service) FROM events WHERE id > ?1 AND kind = 'repair'",
                [last_event],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as usize
    };
    let back = wait_for(Duration::from_secs(300), || (repaired() == SERVICES && running() == SERVICES).then(|| t0.elapsed()));
    let back = back.expect("all 50 back within 5 minutes");
    // Let stragglers land: a second repair of one service would show here.
    std::thread::sleep(Duration::from_secs(5));
    let per_service: Vec<(String, i64)> = {
        let mut st = registry
            .prepare("SELECT service, count(*) FROM events WHERE id > ?1 AND kind LIKE 'repair%' GROUP BY service")
            .unwrap();
        st.query_map([last_event], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let (min, max) = per_service.iter().fold((i64::MAX, 0), |(lo, hi), (_, n)| (lo.min(*n), hi.max(*n)));
    let peak = peak_kib(daemon.pid()) as f64 / 1024.0;
    println!("{SERVICES} services, restart = \"always\", killed at once (one podman kill)");
    println!("{:<58} {:>10}", "what", "value");
    println!("{:<58} {:>10.1}", "mcp sync of the 50 new services (s)", synced.as_secs_f64());
    println!("{:<58} {:>10.1}", "podman kill of all 50 (s)", killed.as_secs_f64());
    println!("{:<58} {:>10.1}", "kill issued -> all 50 running again (s; before: 17-20)", back.as_secs_f64());
    println!("{:<58} {:>10}", "repair events per service (min-max; want 1-1)", format!("{min}-{max}"));
    println!("{:<58} {:>10}", "services with a repair event", per_service.len());
    println!("{:<58} {:>10.1}", "mcp-agent serve peak RSS (MiB; before: ~8)", peak);
    daemon.stop();
}
