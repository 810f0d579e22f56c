//! `cargo bench --bench unikernel`: deploy-to-first-HTTP of the test guest (kernel + busybox
//! initramfs, baked volume, user-mode networking, TCG) through `mcp deploy`, vs the very same
//! qemu command line started by hand (taken from the VM mcp started). Target <= 1.1x.
//! Not a test: it measures and prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::vm_definition;
use common::*;

const ROUNDS: usize = 5;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "bench\n").unwrap();
    let qemu = which::which("qemu-system-x86_64").unwrap();
    let pid_of = |name: &str| -> i32 {
        std::fs::read_to_string(env.state.join("vms").join(name).join("pid")).unwrap().trim().parse().unwrap()
    };
    let (mut via_mcp, mut raw, mut deploy_cmd) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let svc = env.svc(&format!("b{round}"));
        let port = free_port();
        env.define(
            &svc,
            &vm_definition(&svc, &www, &format!("network = \"user\"\nports = [\"127.0.0.1:{port}:8080\"]\nstop_timeout = 0\n")),
        );
        let t0 = Instant::now();
        env.ok(&["deploy", &svc, "--quiet"]);
        deploy_cmd.push(t0.elapsed());
        assert!(http_get(port, Duration::from_secs(120)).is_some());
        via_mcp.push(t0.elapsed());

        // The same command line, by hand.
        let name = format!("{svc}-vm");
        let pid = pid_of(&name);
        let argv: Vec<String> = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
            .split('\0')
            .skip(1)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        signal(pid as u32, libc::SIGKILL);
        assert!(wait_for(Duration::from_secs(10), || std::net::TcpListener::bind(("127.0.0.1", port)).ok()).is_some());
        let t0 = Instant::now();
        assert!(Command::new(&qemu).args(&argv).status().unwrap().success());
        assert!(http_get(port, Duration::from_secs(120)).is_some());
        raw.push(t0.elapsed());
        signal(pid_of(&name) as u32, libc::SIGKILL);
    }
    let med = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    let (r, m, d) = (med(raw.clone()), med(via_mcp.clone()), med(deploy_cmd));
    println!("unikernel deploy to first HTTP (TCG, user-mode net, baked volume), median of {ROUNDS} (ms)");
    println!("{:<52} {:>8} {:>8}", "what", "median", "ratio");
    println!("{:<52} {:>8} {:>7.2}x", "same qemu command line by hand -> first HTTP", ms(r), 1.0);
    println!("{:<52} {:>8} {:>7.2}x", "mcp deploy -> first HTTP (target <= 1.1x)", ms(m), m.as_secs_f64() / r.as_secs_f64());
    println!("{:<52} {:>8}", "  of which the mcp deploy command itself", ms(d));
    println!("samples raw: {:?}", raw.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    println!("samples mcp: {:?}", via_mcp.iter().map(|d| ms(*d)).collect::<Vec<_>>());
}
