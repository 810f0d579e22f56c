//! `cargo bench --bench recover`: the outage of #16 replayed at size. 50 HTTP services lose
//! their containers (a lost podman database); `mcp recover` brings them back from the registry
//! alone. Measured: from the command to every service answering HTTP, against the same 50
//! containers started by hand (`podman run -d`, one after another, same order, same ports)
//! until all answer. Target: recovery <= 1.2x by hand.
//!
//! Not a test: it measures and prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const SERVICES: usize = 50;

/// Until every port answers HTTP (each polled in turn).
fn all_answer(ports: &[u16]) -> Duration {
    let t = Instant::now();
    for &p in ports {
        assert!(http_get(p, Duration::from_secs(300)).is_some(), "port {p} never answered");
    }
    t.elapsed()
}

fn remove_all(names: &[String]) {
    let mut rm = vec!["rm", "-f", "-t", "0"];
    rm.extend(names.iter().map(String::as_str));
    podman_ok(&rm);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    let names: Vec<String> = (0..SERVICES).map(|i| env.svc(&format!("r{i}"))).collect();
    let ports: Vec<u16> = (0..SERVICES).map(|_| free_port()).collect();
    for (svc, port) in names.iter().zip(&ports) {
        env.define(svc, &http_service(svc, *port, "stop_timeout = 0"));
    }
    let containers: Vec<String> = names.iter().map(|s| format!("{s}-web")).collect();

    // By hand: what an operator types, one service after another (the same command).
    let cmd: Vec<String> = serde_json::from_str(HTTPD_CMD).unwrap();
    let t = Instant::now();
    for (c, port) in containers.iter().zip(&ports) {
        let publish = format!("127.0.0.1:{port}:8080");
        let mut run = vec!["run", "-d", "--name", c, "-p", &publish, IMAGE];
        run.extend(cmd.iter().map(String::as_str));
        podman_ok(&run);
    }
    let started = t.elapsed();
    let hand = t.elapsed() + all_answer(&ports);
    remove_all(&containers);

    env.ok(&["sync", "--quiet"]);
    remove_all(&containers);
    let t = Instant::now();
    let r = env.mcp(&["recover", "--quiet"]);
    let command = t.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recovered = command + all_answer(&ports);

    println!("{SERVICES} HTTP services, every container removed (a lost podman database)");
    println!("{:<58} {:>10}", "what", "value");
    println!("{:<58} {:>10.1}", "by hand: podman run -d x50, in order (s)", started.as_secs_f64());
    println!("{:<58} {:>10.1}", "by hand: until all answer (s)", hand.as_secs_f64());
    println!("{:<58} {:>10.1}", "mcp recover: the command (s; includes the settle checks)", command.as_secs_f64());
    println!("{:<58} {:>10.1}", "mcp recover: until all answer (s)", recovered.as_secs_f64());
    println!("{:<58} {:>10.2}", "recover / by hand (target <= 1.2)", recovered.as_secs_f64() / hand.as_secs_f64());
}
