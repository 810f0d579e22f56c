//! `cargo bench --bench fleet` (#15): `mcp sync` at fleet size, N = 100 one-container services
//! on the local node, and N = 20 on each of 3 SSH nodes (real sshd on 127.0.0.1, each node its
//! own agent state, all on this machine's podman). Per setup: an unchanged sync against
//! `mcp status` of the same services (target <= 1.5x), a sync of N new services against N x
//! `podman run -d` of the same containers one after another (target <= 1.1x), and `mcp status`
//! against `podman ps -a --format json` (target <= 1.3x; one per node, at once, as every node's
//! agent lists: here all of them list this machine's podman, with every node's containers).
//! Over SSH also against what a user runs without mcp: `ssh node podman ps -a --format json`
//! (OpenSSH) to every node at once.
//!
//! Not a test: it measures and prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::sshd::{agent_command, keygen, public_key, Sshd};
use common::*;

fn sleeper(name: &str, node: &str) -> String {
    format!("name = \"{name}\"\nnode = \"{node}\"\n[[components]]\nname = \"app\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"100000\"]\nstop_timeout = 0\n")
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn remove(names: &[String]) {
    for chunk in names.chunks(50) {
        let mut rm = vec!["rm", "-f", "-t", "0"];
        rm.extend(chunk.iter().map(String::as_str));
        podman_ok(&rm);
    }
}

struct Row {
    setup: &'static str,
    raw_runs: Duration,
    sync_new: Duration,
    sync_same: Duration,
    status: Duration,
    podman_ps: Duration,
    /// `mcp node list`: reaching every node and its agent, no podman (the transport's floor).
    reach: Duration,
    /// What a user would run without mcp: `ssh node podman ps -a --format json` (OpenSSH), to
    /// every node at once. `None` for the local node.
    ssh_ps: Option<Duration>,
}

/// The services (`(name, node)`) defined in `env`: N x podman run by hand (then removed), a
/// sync of them new, an unchanged sync, status, podman ps.
fn measure(env: &Env, setup: &'static str, services: &[(String, String)], ssh: &[Vec<String>]) -> Row {
    for (s, node) in services {
        env.define(s, &sleeper(s, node));
    }
    let containers: Vec<String> = services.iter().map(|(s, _)| format!("{s}-app")).collect();
    let raw_runs = timed(|| {
        for c in &containers {
            podman_ok(&["run", "-d", "--name", c, IMAGE, "sleep", "100000"]);
        }
    });
    remove(&containers);
    let sync_new = timed(|| {
        env.ok(&["sync", "--quiet"]);
    });
    // Each best of five: the machine's noise is not the tool's.
    let best = |f: &dyn Fn()| (0..5).map(|_| timed(f)).min().unwrap();
    let sync_same = best(&|| {
        let out = env.ok(&["sync", "--json"]).json();
        assert!(out.as_array().unwrap().iter().all(|l| l["result"] == "unchanged"), "{out}");
    });
    let status = best(&|| {
        env.ok(&["status", "--json"]);
    });
    // One `podman ps -a` per node, at once: here every node's agent lists this machine's
    // podman (on a real fleet each node lists its own).
    let nodes = services.iter().map(|(_, n)| n).collect::<std::collections::BTreeSet<_>>().len();
    let podman_ps = best(&|| {
        let children: Vec<_> = (0..nodes)
            .map(|_| std::process::Command::new("podman").args(["ps", "-a", "--format", "json"]).stdout(std::process::Stdio::null()).spawn().unwrap())
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    });
    let reach = best(&|| {
        env.ok(&["node", "list", "--json"]);
    });
    let ssh_ps = (!ssh.is_empty()).then(|| {
        best(&|| {
            let children: Vec<_> = ssh
                .iter()
                .map(|argv| std::process::Command::new("ssh").args(argv).stdout(std::process::Stdio::null()).spawn().unwrap())
                .collect();
            for mut c in children {
                assert!(c.wait().unwrap().success());
            }
        })
    });
    Row { setup, raw_runs, sync_new, sync_same, status, podman_ps, reach, ssh_ps }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows = Vec::new();
    {
        let env = Env::new();
        // The agent with podman itself (the tests' logging wrapper adds a shell per call).
        env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
        let services: Vec<(String, String)> = (0..100).map(|i| (env.svc(&format!("f{i}")), "local".to_string())).collect();
        rows.push(measure(&env, "local node, N = 100", &services, &[]));
    }
    {
        let env = Env::new();
        let key = env.home.join(".ssh/id_ed25519");
        keygen(&key);
        let auth = public_key(&key);
        let nodes: Vec<Sshd> = (0..3).map(|i| Sshd::start(&env.dir.path().join(format!("node-{i}")), std::slice::from_ref(&auth))).collect();
        let mut config = format!("[services]\ndir = \"{}\"\n", env.services.display());
        for (i, n) in nodes.iter().enumerate() {
            config.push_str(&format!(
                "\n[[nodes]]\nname = \"n{i}\"\naddress = \"{}\"\nuser = \"root\"\nagent = \"{}\"\n",
                n.address(),
                agent_command(&n.state)
            ));
        }
        env.write_config_text(&config);
        env.ok(&["login", "--yes"]);
        let services: Vec<(String, String)> = (0..60).map(|i| (env.svc(&format!("g{i}")), format!("n{}", i % 3))).collect();
        let conf = std::env::var("CONTAINERS_CONF").map(|c| format!("CONTAINERS_CONF={c} ")).unwrap_or_default();
        let ssh: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"];
                let mut argv: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
                argv.extend(["-i".into(), key.display().to_string(), "-p".into(), n.port.to_string(), "root@127.0.0.1".into()]);
                argv.push(format!("{conf}podman ps -a --format json"));
                argv
            })
            .collect();
        rows.push(measure(&env, "3 SSH nodes, N = 20 each", &services, &ssh));
    }
    println!("{:<26} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7} {:>9} {:>8} {:>7} {:>9} {:>8} {:>7}", "setup", "runs (s)", "sync new", "ratio", "sync same", "status", "ratio", "podman ps", "status", "ratio", "node list", "ssh ps", "ratio");
    println!("{:<26} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7} {:>9} {:>8} {:>7} {:>9} {:>8} {:>7}", "", "N x run", "(s)", "<=1.1", "(s)", "(s)", "<=1.5", "(s)", "(s)", "<=1.3", "(s)", "(s)", "status");
    for r in rows {
        let s = |d: Duration| d.as_secs_f64();
        println!(
            "{:<26} {:>9.2} {:>9.2} {:>7.2} {:>9.3} {:>8.3} {:>7.2} {:>9.3} {:>8.3} {:>7.2} {:>9.3} {:>8} {:>7}",
            r.setup,
            s(r.raw_runs),
            s(r.sync_new),
            s(r.sync_new) / s(r.raw_runs),
            s(r.sync_same),
            s(r.status),
            s(r.sync_same) / s(r.status),
            s(r.podman_ps),
            s(r.status),
            s(r.status) / s(r.podman_ps),
            s(r.reach),
            r.ssh_ps.map(|d| format!("{:.3}", s(d))).unwrap_or_else(|| "-".into()),
            r.ssh_ps.map(|d| format!("{:.2}", s(r.status) / s(d))).unwrap_or_else(|| "-".into()),
        );
    }
}
