//! `cargo bench --bench plan`: `mcp plan` against a node running 20 services, vs `mcp status`
//! of the same (what it costs to ask "what would a deploy do" instead of "what runs").
//! Prints a table; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const SERVICES: usize = 20;
const ROUNDS: usize = 7;

fn median(f: impl Fn() -> Run) -> Duration {
    let mut v: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            let r = f();
            assert!(r.code == 0 || r.code == 5, "{}", r.stderr);
            t.elapsed()
        })
        .collect();
    v.sort();
    v[ROUNDS / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let names: Vec<String> = (0..SERVICES).map(|i| env.svc(&format!("p{i}"))).collect();
    for n in &names {
        env.define(n, &format!("name = \"{n}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"3600\"]\nstop_timeout = 0\n"));
    }
    env.ok(&["sync", "--quiet"]);
    let one = &names[0];
    let rows = [
        ("mcp status <one service>", median(|| env.mcp(&["status", one]))),
        ("mcp plan <one service> (target <= 1.2x)", median(|| env.mcp(&["plan", one]))),
        ("mcp status (all 20)", median(|| env.mcp(&["status"]))),
        ("mcp sync --plan (all 20)", median(|| env.mcp(&["sync", "--plan"]))),
    ];
    println!("mcp plan benchmark: a local node running {SERVICES} services, median of {ROUNDS} (ms)");
    println!("{:<44} {:>10} {:>10}", "what", "median", "ratio");
    for (i, (what, d)) in rows.iter().enumerate() {
        let base = rows[i - i % 2].1;
        println!("{:<44} {:>10.1} {:>9.2}x", what, d.as_secs_f64() * 1000.0, d.as_secs_f64() / base.as_secs_f64());
    }
}
