//! The agent's state and configuration: permissions, the built-in defaults, the podman
//! settings operators need on some hosts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn registry_and_state_dir_are_private() {
    let env = Env::new();
    // A state dir that exists with a wide mode, holding an env file a killed agent left (named
    // by its pid, long gone) and one of a live process (this test's).
    let scratch = env.state.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(scratch.join("env-999999999-abcdef"), "PASSWORD=left-behind\n").unwrap();
    let live = scratch.join(format!("env-{}-abcdef", std::process::id()));
    std::fs::write(&live, "X=1\n").unwrap();
    let svc = env.svc("perm");
    env.define(&svc, &http_service(&svc, free_port(), "env = { PASSWORD = \"now\" }\n"));
    env.ok(&["deploy", &svc]);
    assert!(!scratch.join("env-999999999-abcdef").exists(), "a dead agent's env file is removed");
    assert!(live.exists(), "a live process's env file is left alone");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "the deploy's own env file is gone too: {left:?}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.state), 0o700);
    assert_eq!(mode(&env.state.join("registry.db")), 0o600);
    for side in ["registry.db-wal", "registry.db-shm"] {
        let p = env.state.join(side);
        if p.exists() {
            assert_eq!(mode(&p) & 0o077, 0, "{side} readable by others");
        }
    }
}

#[test]
fn without_any_config_the_local_node_and_services_dir_are_used() {
    let env = Env::new();
    let work = env.dir.path().join("project");
    std::fs::create_dir_all(work.join("services")).unwrap();
    let svc = env.svc("bare");
    let port = free_port();
    std::fs::write(work.join(format!("services/{svc}.toml")), http_service(&svc, port, "").replace("node = \"local\"\n", "")).unwrap();
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // No --config, no MCP_CONFIG, an empty HOME: the built-in config. The agent found beside
    // mcp is used, with its state dir from MCP_AGENT_STATE.
    let out = Command::new(MCP)
        .args(["deploy", &svc])
        .current_dir(&work)
        .env_remove("MCP_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &home)
        .env("MCP_AGENT_STATE", &env.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(http_get(port, Duration::from_secs(20)).is_some());
    assert!(env.state.join("registry.db").exists());
}

#[test]
fn xdg_config_home_is_respected() {
    let env = Env::new();
    let xdg = env.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("mcp")).unwrap();
    std::fs::write(xdg.join("mcp/mcp.toml"), "[[nodes]]\nname = \"only-in-xdg\"\naddress = \"local\"\nagent = \"/nonexistent/agent rpc\"\n").unwrap();
    let out = Command::new(MCP).args(["list"]).env_remove("MCP_CONFIG").env("XDG_CONFIG_HOME", &xdg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only-in-xdg"), "the XDG config was read: {err}");
}

#[test]
fn agent_config_file_sets_podman_options() {
    let env = Env::new();
    let conf = std::env::var("CONTAINERS_CONF").ok();
    let svc = env.svc("conf");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, ""));
    let calls = env.dir.path().join("calls.log");
    let wrapper = env.dir.path().join("podman-conf");
    // The wrapper records the CONTAINERS_CONF podman gets and the global flags.
    std::fs::write(&wrapper, format!("#!/bin/sh\necho \"conf=$CONTAINERS_CONF args=$1\" >> '{}'\nexec podman \"$@\"\n", calls.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf_line = match &conf {
        Some(c) => format!("containers_conf = \"{c}\"\n"),
        None => String::new(),
    };
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(
        env.state.join("agent.toml"),
        format!("[podman]\nprogram = \"{}\"\nargs = [\"--log-level=error\"]\n{conf_line}settle_ms = 0\n", wrapper.display()),
    )
    .unwrap();
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let out = Command::new(MCP)
        .args(["--config", env.config.to_str().unwrap(), "deploy", &svc])
        .env_remove("CONTAINERS_CONF")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(&calls).unwrap();
    let first = log.lines().next().unwrap();
    assert_eq!(first, format!("conf={} args=--log-level=error", conf.unwrap_or_default()));
    let shown = Command::new(AGENT).args(["config", "--state-dir", env.state.to_str().unwrap()]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("settle_ms = 0") && shown.contains("--log-level=error"), "{shown}");
}

#[test]
fn podman_missing_is_a_clear_error() {
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {} --podman /nonexistent/podman", env.state.display()));
    let r = env.mcp(&["ps"]);
    assert_eq!(r.code, 1, "the node answered; its podman is missing: {}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/podman not found"), "{}", r.stderr);
}
