//! A replace interrupted at its worst moment (the settle window: the old container renamed to
//! `<name>.mcp-old` and stopped, the new one up, the registry not yet written): the agent
//! killed (#13.6), or Ctrl-C at the terminal of a local deploy (#13.7). Real binaries, real
//! podman; the next command must find a node it can work with.

mod common;

use std::time::Duration;

use common::*;

/// An Env whose local agent keeps replacements in the settle window for 4 s.
fn slow_settle_env() -> Env {
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {} --podman {} --settle-ms 4000", env.state.display(), env.podman_wrapper().display()));
    env
}

/// `mcp deploy svc`, returned once it says it checks the replacement (the settle window).
fn deploy_until_settling(env: &Env, svc: &str) -> std::process::Child {
    mcp_until(env, &["deploy", svc], "checking that new instances stay up")
}

fn names(env: &Env, svc: &str) -> Vec<String> {
    let out = podman_ok(&["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label=mcp.service={svc}")]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    let _ = env;
    v
}

fn body(port: u16) -> Option<String> {
    http_get(port, Duration::from_secs(30))
}

/// #13.6: the agent SIGKILLed in the settle window leaves `<name>.mcp-old`; the previous
/// definition deploys again (it used to fail with "name already in use"), status explains the
/// leftover meanwhile, and the new definition deploys too.
#[test]
fn agent_killed_in_the_settle_window_is_recovered_by_the_next_deploy() {
    let env = slow_settle_env();
    let svc = env.svc("killed");
    let port = free_port();
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let v1 = http_service(&svc, port, "env = { V = \"1\" }\nstop_timeout = 1\n");
    let v2 = http_service(&svc, port, "env = { V = \"2\" }\nstop_timeout = 1\n");
    env.define(&svc, &v1);
    env.ok(&["deploy", &svc]);
    env.define(&svc, &v2);
    let mut mcp = deploy_until_settling(&env, &svc);
    let agent = children_of(mcp.id()).into_iter().find(|(_, cmd)| cmd.contains("mcp-agent")).expect("the local agent").0;
    signal(agent, libc::SIGKILL);
    assert!(!mcp.wait().unwrap().success());
    assert_eq!(names(&env, &svc), vec![format!("{svc}-web"), format!("{svc}-web.mcp-old")], "the interrupted state");
    let st = env.mcp(&["status", &svc]).stdout;
    assert!(st.contains("interrupted replace"), "{st}");

    // The previous definition again: the replace is undone, nothing else to do.
    env.define(&svc, &v1);
    let out = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(out["result"]["changes"][0]["change"], "unchanged", "{out}");
    assert_eq!(names(&env, &svc), vec![format!("{svc}-web")]);
    assert_eq!(body(port).as_deref(), Some("hello from the test image\n"));
    assert!(env.events(&svc).iter().any(|(k, m)| k == "recovered" && m.contains("undid an interrupted replace")), "{:?}", env.events(&svc));
    let st = env.ok(&["status", &svc, "--json"]).json();
    assert!(st["nodes"][0]["result"]["services"][0]["components"][0]["drift"].is_null(), "{st}");

    // Interrupted again, then the new definition: undone, then replaced for real.
    env.define(&svc, &v2);
    let mut mcp = deploy_until_settling(&env, &svc);
    let agent = children_of(mcp.id()).into_iter().find(|(_, cmd)| cmd.contains("mcp-agent")).unwrap().0;
    signal(agent, libc::SIGKILL);
    let _ = mcp.wait();
    let out = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(out["result"]["changes"][0]["change"], "replaced", "{out}");
    assert_eq!(names(&env, &svc), vec![format!("{svc}-web")]);
}

/// #13.7: Ctrl-C at the terminal during a local deploy's settle window stops `mcp`, not the
/// agent: the replace completes (or rolls back) and no `.mcp-old` is left.
#[test]
fn ctrl_c_during_a_local_deploy_lets_the_agent_finish() {
    let env = slow_settle_env();
    let svc = env.svc("ctrlc");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, "env = { V = \"1\" }\nstop_timeout = 1\n"));
    env.ok(&["deploy", &svc]);
    env.define(&svc, &http_service(&svc, port, "env = { V = \"2\" }\nstop_timeout = 1\n"));
    let mut mcp = deploy_until_settling(&env, &svc);
    let agent = children_of(mcp.id()).into_iter().find(|(_, cmd)| cmd.contains("mcp-agent")).unwrap().0;
    // What a terminal does: SIGINT to the foreground process group.
    // SAFETY: kill(2) on the process group of the child this test started.
    unsafe { libc::kill(-(mcp.id() as i32), libc::SIGINT) };
    let _ = mcp.wait();
    let finished = wait_for(Duration::from_secs(30), || (!process_alive(agent as i32)).then_some(()));
    assert!(finished.is_some(), "the agent finishes its request and exits");
    assert_eq!(names(&env, &svc), vec![format!("{svc}-web")], "no .mcp-old left");
    let st = env.ok(&["status", &svc, "--json"]).json();
    let c = &st["nodes"][0]["result"]["services"][0]["components"][0];
    assert!(c["drift"].is_null() && c["observed"] == "running", "{st}");
    assert!(env.events(&svc).iter().any(|(k, _)| k == "replaced"), "the replace was committed: {:?}", env.events(&svc));
}
