//! `cargo bench --bench health`: what the deploy's gate costs. A fresh instance without a
//! health check must stay up for the settle window (1.5 s by default); with one, the deploy
//! commits as soon as it answers healthy. Prints one table; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use common::*;
use stats::{median, ms, time};

const ROUNDS: usize = 5;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let port = free_port();
    let health = format!("\n[components.health]\nhttp = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\nstart_period = \"30s\"\n");

    let (mut raw, mut fresh, mut fresh_checked, mut replace, mut replace_checked) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let name = format!("{}-raw{round}-web", env.prefix);
        raw.push(time(|| {
            podman_run_http(&name, port, IMAGE);
        }));
        podman_ok(&["rm", "-f", "-t", "0", &name]);

        for (checked, first, again) in [(false, &mut fresh, &mut replace), (true, &mut fresh_checked, &mut replace_checked)] {
            let svc = env.svc(&format!("h{round}{checked}"));
            let def = |version: &str| {
                let extra = format!("env = {{ VERSION = \"{version}\" }}");
                let mut d = http_service(&svc, port, &extra);
                if checked {
                    d.push_str(&health);
                }
                d
            };
            env.define(&svc, &def("1"));
            first.push(time(|| {
                env.ok(&["deploy", &svc, "--quiet"]);
            }));
            env.define(&svc, &def("2"));
            again.push(time(|| {
                env.ok(&["deploy", &svc, "--quiet"]);
            }));
            podman_ok(&["rm", "-f", "-t", "0", &format!("{svc}-web")]);
        }
    }
    let base = median(raw.clone());
    println!("deploy gate benchmark, local node, median of {ROUNDS} (ms)");
    println!("{:<56} {:>10} {:>10}", "what", "median", "vs raw");
    let row = |what: &str, samples: Vec<std::time::Duration>| {
        let m = median(samples);
        println!("{:<56} {:>10} {:>9.2}x", what, ms(m), m.as_secs_f64() / base.as_secs_f64());
    };
    row("podman run -d (raw)", raw);
    row("mcp deploy, new component, settle window (1.5 s)", fresh);
    row("mcp deploy, new component, http health check", fresh_checked);
    row("mcp deploy, replace, settle window (1.5 s)", replace);
    row("mcp deploy, replace, http health check", replace_checked);
}
