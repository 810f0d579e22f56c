//! `cargo bench --bench unikernel`: deploy-to-first-HTTP under TCG with user-mode networking
//! and one baked volume dir, through `mcp deploy` vs by hand:
//! - Linux kernel form (kernel + busybox initramfs): the very same qemu command line started
//!   by hand (taken from the VM mcp started). Target <= 1.1x.
//! - Nanos program form (a static guest program from tests/guest, the toolchain built from
//!   the pinned source): `mkfs` on a hand-written manifest + the same qemu command line on
//!   that image. Target <= 1.2x. And how long `mcp stop` takes for a Nanos guest.
//!
//! Not a test: it measures and prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::vm_definition;
use common::nanos::{agent_toml, program_service, programs, toolchain};
use common::*;

const ROUNDS: usize = 5;

fn med(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    kernel_form();
    println!();
    nanos_form();
}

/// The argv (without the program) of the running process `pid`.
fn argv_of(pid: i32) -> Vec<String> {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .split('\0')
        .skip(1)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

fn kernel_form() {
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
        let argv = argv_of(pid);
        signal(pid as u32, libc::SIGKILL);
        assert!(wait_for(Duration::from_secs(10), || std::net::TcpListener::bind(("127.0.0.1", port)).ok()).is_some());
        let t0 = Instant::now();
        assert!(Command::new(&qemu).args(&argv).status().unwrap().success());
        assert!(http_get(port, Duration::from_secs(120)).is_some());
        raw.push(t0.elapsed());
        signal(pid_of(&name) as u32, libc::SIGKILL);
    }
    let (r, m, d) = (med(raw.clone()), med(via_mcp.clone()), med(deploy_cmd));
    println!("Linux kernel form: deploy to first HTTP (TCG, user-mode net, baked volume), median of {ROUNDS} (ms)");
    println!("{:<52} {:>8} {:>8}", "what", "median", "ratio");
    println!("{:<52} {:>8} {:>7.2}x", "same qemu command line by hand -> first HTTP", ms(r), 1.0);
    println!("{:<52} {:>8} {:>7.2}x", "mcp deploy -> first HTTP (target <= 1.1x)", ms(m), m.as_secs_f64() / r.as_secs_f64());
    println!("{:<52} {:>8}", "  of which the mcp deploy command itself", ms(d));
    println!("samples raw: {:?}", raw.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    println!("samples mcp: {:?}", via_mcp.iter().map(|d| ms(*d)).collect::<Vec<_>>());
}

fn nanos_form() {
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    agent_toml(&env.state, "");
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "bench\n").unwrap();
    let prog = &programs().static_tls;
    let t = toolchain();
    let qemu = which::which("qemu-system-x86_64").unwrap();
    let (mut via_mcp, mut raw, mut deploy_cmd, mut stops) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let svc = env.svc(&format!("n{round}"));
        let port = free_port();
        let fields = format!(
            "cmd = [\"serve\", \"8080\", \"/srv/www\"]\nvolumes = [\"{}:/srv/www\"]\nnetwork = \"user\"\nports = [\"127.0.0.1:{port}:8080\"]\n",
            www.display()
        );
        env.define(&svc, &program_service(&svc, prog, &fields));
        let t0 = Instant::now();
        env.ok(&["deploy", &svc, "--quiet"]);
        deploy_cmd.push(t0.elapsed());
        assert!(http_get(port, Duration::from_secs(60)).is_some());
        via_mcp.push(t0.elapsed());
        let vm = env.state.join("vms").join(format!("{svc}-app"));
        let pid: i32 = std::fs::read_to_string(vm.join("pid")).unwrap().trim().parse().unwrap();
        let argv = argv_of(pid);
        let t0 = Instant::now();
        env.ok(&["stop", &svc, "--quiet"]);
        stops.push(t0.elapsed());

        // By hand: mkfs on a manifest naming the same files, then the same qemu command line
        // on that image.
        let image = env.dir.path().join(format!("hand{round}.img"));
        let manifest = format!(
            "(children:(mcp-guest:(contents:(host:{})) srv:(children:(www:(children:(index.html:(contents:(host:{}))))))) \
             program:/mcp-guest arguments:[mcp-guest serve 8080 /srv/www] environment:())",
            prog.display(),
            www.join("index.html").display()
        );
        let disk = vm.join("disk.img").display().to_string();
        let argv: Vec<String> = argv.iter().map(|a| a.replace(&disk, &image.display().to_string())).collect();
        assert!(wait_for(Duration::from_secs(10), || std::net::TcpListener::bind(("127.0.0.1", port)).ok()).is_some());
        let t0 = Instant::now();
        let mut mkfs = Command::new(t.join("mkfs"))
            .arg("-b")
            .arg(t.join("boot.img"))
            .arg("-k")
            .arg(t.join("kernel.img"))
            .arg(&image)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(mkfs.stdin.as_mut().unwrap(), manifest.as_bytes()).unwrap();
        drop(mkfs.stdin.take());
        assert!(mkfs.wait().unwrap().success());
        assert!(Command::new(&qemu).args(&argv).status().unwrap().success());
        assert!(http_get(port, Duration::from_secs(60)).is_some());
        raw.push(t0.elapsed());
        let pid: i32 = std::fs::read_to_string(vm.join("pid")).unwrap().trim().parse().unwrap();
        signal(pid as u32, libc::SIGKILL);
    }
    let (r, m, d, s) = (med(raw.clone()), med(via_mcp.clone()), med(deploy_cmd), med(stops.clone()));
    println!("Nanos program form: deploy to first HTTP (TCG, user-mode net, baked volume), median of {ROUNDS} (ms)");
    println!("{:<52} {:>8} {:>8}", "what", "median", "ratio");
    println!("{:<52} {:>8} {:>7.2}x", "mkfs + same qemu command line by hand -> first HTTP", ms(r), 1.0);
    println!("{:<52} {:>8} {:>7.2}x", "mcp deploy -> first HTTP (target <= 1.2x)", ms(m), m.as_secs_f64() / r.as_secs_f64());
    println!("{:<52} {:>8}", "  of which the mcp deploy command itself", ms(d));
    println!("{:<52} {:>8}", "mcp stop of a Nanos guest (until qemu is gone)", ms(s));
    println!("samples raw: {:?}", raw.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    println!("samples mcp: {:?}", via_mcp.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    println!("samples stop: {:?}", stops.iter().map(|d| ms(*d)).collect::<Vec<_>>());
}
