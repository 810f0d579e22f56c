//! `cargo bench --bench deploy`: what mcp costs over podman itself, on the local node.
//!
//! Prints one table: `mcp deploy` of a 1-container service (CLI + agent + registry + podman)
//! vs the raw `podman run -d` of the same container, and a no-op redeploy. Not a test: it
//! asserts nothing about speed, it measures.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use std::process::Command;
use std::time::Duration;

use common::sshd::{agent_command, keygen, public_key, Sshd};
use common::*;
use stats::{median, ms, time};

const ROUNDS: usize = 7;




fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test discovery: nothing to list.
    }
    let env = Env::new();
    // The agent without the logging wrapper: podman straight from PATH. No settle window: this
    // measures mcp's own cost; the window a new component must stay up (1.5 s by default, or
    // until its health check passes) is measured by benches/health.rs.
    env.write_config(&format!("{AGENT} rpc --state-dir {} --settle-ms 0", env.state.display()));
    let port = free_port();
    let cmd: Vec<String> = serde_json::from_str(HTTPD_CMD).unwrap();

    let (mut raw, mut deploy, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Raw podman, same container (name, port, command).
        let name = format!("{}-raw{round}-web", env.prefix);
        raw.push(time(|| {
            podman_run_http(&name, port, IMAGE);
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
    drop(env);
    println!();
    ssh_section(&cmd);
}

/// User + system CPU of every child waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn row(what: &str, value: Duration, base: Duration) {
    println!("{:<52} {:>10} {:>9.2}x", what, ms(value), value.as_secs_f64() / base.as_secs_f64());
}

/// Over SSH (real sshd on 127.0.0.1): mcp vs the same work done with `ssh` by hand.
fn ssh_section(cmd: &[String]) {
    const NODES: usize = 10;
    let env = Env::new();
    let key = env.home.join(".ssh/id_ed25519");
    keygen(&key);
    let auth = public_key(&key);
    let nodes: Vec<Sshd> = (0..NODES).map(|i| Sshd::start(&env.dir.path().join(format!("n{i}")), std::slice::from_ref(&auth))).collect();
    let config = |count: usize| {
        let mut text = format!("[services]\ndir = \"{}\"\n", env.services.display());
        for (i, n) in nodes.iter().take(count).enumerate() {
            text.push_str(&format!(
                "[[nodes]]\nname = \"n{i}\"\naddress = \"{}\"\nuser = \"root\"\nagent = \"{} --settle-ms 0\"\n",
                n.address(),
                agent_command(&n.state)
            ));
        }
        env.write_config_text(&text);
    };
    config(NODES);
    env.ok(&["login", "--yes"]);
    // `ssh` by hand to one node, as an operator would script it.
    let ssh_cmd = |port: u16, remote: &str| {
        let mut c = Command::new("ssh");
        c.args(["-q", "-i", key.to_str().unwrap(), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-p", &port.to_string(), "root@127.0.0.1", remote])
            .stdout(std::process::Stdio::null());
        c
    };
    let ssh = |remote: &str| {
        let st = ssh_cmd(nodes[0].port, remote).status().unwrap();
        assert!(st.success(), "ssh {remote}");
    };
    let conf = std::env::var("CONTAINERS_CONF").map(|c| format!("CONTAINERS_CONF={c} ")).unwrap_or_default();
    let port = free_port();
    let quoted: Vec<String> = cmd.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();

    let (mut ssh_true, mut ssh_run, mut deploy, mut noop, mut st1, mut st10) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        ssh_true.push(time(|| ssh("true")));
        let name = format!("{}-sshraw{round}-web", env.prefix);
        ssh_run.push(time(|| {
            ssh(&format!("{conf}podman run -d --name {name} -p 127.0.0.1:{port}:8080 {IMAGE} {}", quoted.join(" ")))
        }));
        podman_ok(&["rm", "-f", "-t", "0", &name]);
        let svc = env.svc(&format!("s{round}"));
        env.define(&svc, &http_service(&svc, port, "").replace("node = \"local\"", "node = \"n0\""));
        deploy.push(time(|| {
            env.ok(&["deploy", &svc, "--quiet"]);
        }));
        noop.push(time(|| {
            assert!(env.ok(&["deploy", &svc, "--quiet"]).stdout.contains("unchanged"));
        }));
        podman_ok(&["rm", "-f", "-t", "0", &format!("{svc}-web")]);
        std::fs::remove_file(env.services.join(format!("{svc}.toml"))).unwrap();
    }
    // The same per-node work by hand: ssh + podman ps on every node at once.
    let fan = |count: usize| {
        let children: Vec<_> = nodes
            .iter()
            .take(count)
            .map(|n| ssh_cmd(n.port, &format!("{conf}podman ps -a --format json")).spawn().unwrap())
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    };
    // The floor of any fan-out here: only the SSH sessions, nothing run on the nodes.
    let fan_true = |count: usize| {
        let children: Vec<_> = nodes.iter().take(count).map(|n| ssh_cmd(n.port, "true").spawn().unwrap()).collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    };
    let (mut raw1, mut raw10, mut true1, mut true10) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw1.push(time(|| fan(1)));
        raw10.push(time(|| fan(NODES)));
        true1.push(time(|| fan_true(1)));
        true10.push(time(|| fan_true(NODES)));
        config(1);
        st1.push(time(|| {
            env.ok(&["status", "--json"]);
        }));
        config(NODES);
        st10.push(time(|| {
            env.ok(&["status", "--json"]);
        }));
    }
    // The same with `mcp-agent serve` running on every node: status is answered from the
    // daemon's observed state (kept current by podman events) instead of a podman call.
    let daemons: Vec<std::process::Child> = nodes
        .iter()
        .map(|n| {
            let mut c = Command::new(AGENT);
            c.arg("serve").arg("--state-dir").arg(&n.state);
            if let Ok(conf) = std::env::var("CONTAINERS_CONF") {
                c.arg("--containers-conf").arg(conf);
            }
            c.stderr(std::process::Stdio::null()).spawn().unwrap()
        })
        .collect();
    for n in &nodes {
        let sock = n.state.join("agent.sock");
        assert!(wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&sock).ok()).is_some());
    }
    let (mut d1, mut d10, mut cpu1, mut cpu10) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        config(1);
        let c = children_cpu();
        d1.push(time(|| {
            env.ok(&["status", "--json"]);
        }));
        cpu1.push(children_cpu() - c);
        config(NODES);
        let c = children_cpu();
        d10.push(time(|| {
            env.ok(&["status", "--json"]);
        }));
        cpu10.push(children_cpu() - c);
    }
    for mut d in daemons {
        signal(d.id(), libc::SIGTERM);
        let _ = d.wait();
    }
    let (t, r, d, n, s1, s10) = (median(ssh_true), median(ssh_run), median(deploy), median(noop), median(st1), median(st10));
    let (ds1, ds10) = (median(d1), median(d10));
    println!("over SSH (sshd on 127.0.0.1), median of {ROUNDS} (ms)");
    println!("{:<52} {:>10} {:>10}", "what", "median", "ratio");
    row("ssh node true", t, t);
    row("ssh node podman run -d (raw)", r, r);
    row("mcp deploy over SSH vs raw (target <= 1.2x)", d, r);
    row("mcp deploy unchanged over SSH vs ssh true (<= 1.5x)", n, t);
    row("mcp status, 1 node", s1, s1);
    row(&format!("mcp status, {NODES} nodes vs 1 (target <= 2x)"), s10, s1);
    row("mcp status, 1 node, agent daemon running", ds1, ds1);
    row(&format!("mcp status, {NODES} nodes vs 1, daemons running (<= 2x)"), ds10, ds1);
    let (c1, c10) = (median(cpu1), median(cpu10));
    row("  CPU of the mcp process itself, 1 node", c1, c1);
    row(&format!("  CPU of the mcp process itself, {NODES} nodes vs 1"), c10, c1);
    let (r1, r10) = (median(raw1), median(raw10));
    row("by hand: ssh node podman ps, 1 node", r1, r1);
    row(&format!("by hand: the same on {NODES} nodes at once vs 1"), r10, r1);
    let (t1, t10) = (median(true1), median(true10));
    row("by hand: ssh node true, 1 node", t1, t1);
    row(&format!("by hand: ssh node true on {NODES} nodes at once vs 1"), t10, t1);
    println!("(all {NODES} nodes share this machine's cores: per-node work adds up here, unlike on a real fleet)");
}
