//! #15: `mcp sync` and `mcp deploy a b c` send one request per node; the agent takes one
//! listing, answers what is unchanged from it, and deploys the rest (each service
//! all-or-nothing on its own). Real binaries, real podman.

mod common;


use common::*;

fn sleeper(name: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nnode = \"local\"\n[[components]]\nname = \"app\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n{extra}")
}

fn result_of<'a>(lines: &'a serde_json::Value, svc: &str) -> &'a serde_json::Value {
    lines.as_array().unwrap().iter().find(|l| l["service"] == svc).unwrap_or_else(|| panic!("{svc} not in {lines}"))
}

#[test]
fn a_batch_deploys_the_valid_rolls_back_the_failing_and_rejects_the_refused() {
    let env = Env::new();
    // This node takes volumes under /srv only.
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(env.state.join("agent.toml"), "[policy]\nvolume_roots = [\"/srv\"]\n").unwrap();
    let (a, b, bad, refused) = (env.svc("a"), env.svc("b"), env.svc("bad"), env.svc("refused"));
    env.define(&bad, &sleeper(&bad, ""));
    env.ok(&["deploy", &bad]);
    let v1 = env.container_id(&format!("{bad}-app")).unwrap();
    env.define(&a, &sleeper(&a, ""));
    env.define(&b, &sleeper(&b, ""));
    // v2 of `bad` exits at once: its gate fails and v1 must stay.
    env.define(&bad, &sleeper(&bad, "").replace("cmd = [\"sleep\", \"600\"]", "cmd = [\"sh\", \"-c\", \"exit 3\"]"));
    env.define(&refused, &sleeper(&refused, "volumes = [\"/etc:/host-etc\"]\n"));

    env.clear_podman_log();
    let r = env.mcp(&["sync", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    assert_eq!(result_of(&lines, &a)["result"], "1 created", "{lines}");
    assert_eq!(result_of(&lines, &b)["result"], "1 created", "{lines}");
    let failed = result_of(&lines, &bad);
    assert_eq!(failed["result"], "failed", "{lines}");
    assert!(failed["error"].as_str().unwrap().contains("did not stay up"), "{lines}");
    let rejected = result_of(&lines, &refused);
    assert_eq!(rejected["result"], "rejected", "{lines}");
    assert!(rejected["error"].as_str().unwrap().contains("policy"), "{lines}");
    assert!(r.stderr.contains("1 rejected"), "{}", r.stderr);
    // Nothing of the refused one ran; the failing one's previous version runs on.
    assert!(!env.podman_calls().iter().any(|c| c.contains(&refused)), "{:?}", env.podman_calls());
    assert_eq!(env.container_id(&format!("{bad}-app")), Some(v1.clone()));
    assert_eq!(env.container_state(&format!("{bad}-app")).as_deref(), Some("running"));
    for svc in [&a, &b] {
        assert_eq!(env.container_state(&format!("{svc}-app")).as_deref(), Some("running"));
    }

    // Only the refused one left wrong: exit 2, the rest unchanged (one listing, no change).
    env.define(&bad, &sleeper(&bad, ""));
    env.clear_podman_log();
    let r = env.mcp(&["sync", "--json"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let lines = r.json();
    for svc in [&a, &b, &bad] {
        assert_eq!(result_of(&lines, svc)["result"], "unchanged", "{lines}");
    }
    let calls = env.podman_calls();
    assert_eq!(env.podman_mutations(), Vec::<String>::new());
    assert_eq!(calls.iter().filter(|c| c.starts_with("ps ")).count(), 1, "one listing for the batch: {calls:?}");
    assert_eq!(env.container_id(&format!("{bad}-app")), Some(v1));

    // `mcp deploy a b`: the same batch, for named services.
    std::fs::remove_file(env.services.join(format!("{refused}.toml"))).unwrap();
    let r = env.ok(&["deploy", &a, &b, "--json"]);
    let lines = r.json();
    assert_eq!((result_of(&lines, &a)["result"].as_str(), result_of(&lines, &b)["result"].as_str()), (Some("unchanged"), Some("unchanged")));
    let r = env.mcp(&["deploy", &a, "nosuch"]);
    assert_eq!(r.code, 2, "a definition that does not load stops the batch: {}", r.stderr);
}

/// A batch cut short by a killed agent (in the middle of its replaces) leaves every service
/// old or new; the next sync finishes the job: all new, no leftovers, status as podman shows.
#[test]
fn a_batch_cut_short_by_a_killed_agent_leaves_each_service_old_or_new() {
    let env = Env::new();
    env.write_config(&format!("{AGENT} rpc --state-dir {} --podman {} --settle-ms 3000", env.state.display(), env.podman_wrapper().display()));
    let svcs: Vec<String> = (0..4).map(|i| env.svc(&format!("k{i}"))).collect();
    for s in &svcs {
        env.define(s, &sleeper(s, "env = { V = \"1\" }\n"));
    }
    env.ok(&["sync"]);
    let spec_of = |s: &str| env.ok(&["status", s, "--json"]).json()["nodes"][0]["result"]["services"][0]["components"][0]["spec"].as_str().unwrap().to_string();
    let old: Vec<String> = svcs.iter().map(|s| spec_of(s)).collect();
    for s in &svcs {
        env.define(s, &sleeper(s, "env = { V = \"2\" }\n"));
    }
    let mut mcp = mcp_until(&env, &["sync"], "checking that new instances stay up");
    let agent = children_of(mcp.id()).into_iter().find(|(_, cmd)| cmd.contains("mcp-agent")).expect("the local agent").0;
    signal(agent, libc::SIGKILL);
    let _ = mcp.wait();

    // Each service is registered old or new, never anything else (compared once the next
    // sync made them all new).
    let mid: Vec<String> = svcs.iter().map(|s| spec_of(s)).collect();
    let r = env.mcp(&["sync", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for ((s, before), between) in svcs.iter().zip(&old).zip(&mid) {
        let now = spec_of(s);
        assert_ne!(now, *before, "{s} is new after the next sync");
        assert!(between == before || *between == now, "{s} was registered as {between}: neither old {before} nor new {now}");
        let names = podman_ok(&["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label=mcp.service={s}")]);
        assert_eq!(names.trim(), format!("{s}-app"), "no leftovers: {names}");
        assert_eq!(env.container_state(&format!("{s}-app")).as_deref(), Some("running"));
        let st = env.ok(&["status", s, "--json"]).json();
        assert!(st["nodes"][0]["result"]["services"][0]["components"][0]["drift"].is_null(), "{st}");
    }
}
