//! `cargo bench --bench deploy`: what mcp costs over podman itself, on the local node.
//!
//! Prints one table: `mcp deploy` of a 1-container service (CLI + agent + registry + podman)
//! vs the raw `podman run -d` of the same container, and a no-op redeploy. Not a test: it
//! asserts nothing about speed, it measures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const ROUNDS: usize = 7;

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test discovery: nothing to list.
    }
    let env = Env::new();
    // The agent without the logging wrapper: podman straight from PATH.
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let port = free_port();
    let cmd: Vec<String> = serde_json::from_str(HTTPD_CMD).unwrap();

    let (mut raw, mut deploy, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Raw podman, same container (name, port, command).
        let name = format!("{}-raw{round}-web", env.prefix);
        raw.push(time(|| {
            let st = Command::new("podman")
                .args(["run", "-d", "--name", &name, "-p", &format!("127.0.0.1:{port}:8080"), IMAGE])
                .args(&cmd)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        }));
        podman_ok(&["rm", "-f", "-t", "0", &name]);

        // mcp deploy of a fresh service, then the no-op redeploy.
        let svc = env.svc(&format!("b{round}"));
        env.define(&svc, &http_service(&svc, port, ""));
        deploy.push(time(|| {
            env.ok(&["deploy", &svc, "--quiet"]);
        }));
        noop.push(time(|| {
            let r = env.ok(&["deploy", &svc, "--quiet"]);
            assert!(r.stdout.contains("unchanged"));
        }));
        podman_ok(&["rm", "-f", "-t", "0", &format!("{svc}-web")]);
    }

    let (r, d, n) = (median(raw), median(deploy.clone()), median(noop));
    println!("mcp deploy benchmark, local node, median of {ROUNDS} (ms)");
    println!("{:<44} {:>10} {:>10}", "what", "median", "vs raw");
    println!("{:<44} {:>10} {:>10}", "podman run -d (raw)", ms(r), "1.00x");
    println!("{:<44} {:>10} {:>9.2}x", "mcp deploy, 1 container (target <= 1.3x)", ms(d), d.as_secs_f64() / r.as_secs_f64());
    println!("{:<44} {:>10} {:>9.2}x", "mcp deploy, unchanged (no-op)", ms(n), n.as_secs_f64() / r.as_secs_f64());
    println!("deploy samples: {:?}", deploy.iter().map(|d| ms(*d)).collect::<Vec<_>>());
}
