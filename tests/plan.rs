//! `mcp plan` against a real agent and podman: per component what a deploy would do (create,
//! replace with the fields that differ and env values masked, start, remove, keep), exit 5
//! while something is pending and 0 when not, `sync --plan` for every definition; and none of
//! it changes anything (a logging podman wrapper sees only reads).

mod common;

use common::*;

fn component(name: &str, cmd: &str, extra: &str) -> String {
    format!("[[components]]\nname = \"{name}\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"{cmd}\"]\nstop_timeout = 0\n{extra}\n")
}

#[test]
fn plan_shows_what_a_deploy_would_do_and_changes_nothing() {
    let env = Env::new();
    let svc = env.svc("plan");
    let head = format!("name = \"{svc}\"\nnode = \"local\"\n");
    env.define(
        &svc,
        &format!("{head}{}{}{}", component("a", "600", "env = { TOKEN = \"old-secret\" }"), component("b", "600", ""), component("gone", "600", "")),
    );
    env.ok(&["deploy", &svc]);
    let ids = |names: &[&str]| -> Vec<Option<String>> { names.iter().map(|n| env.container_id(&format!("{svc}-{n}"))).collect() };
    podman_ok(&["stop", "-t", "0", &format!("{svc}-b")]);
    env.define(&svc, &format!("{head}{}{}{}", component("a", "601", "env = { TOKEN = \"new-secret\" }"), component("b", "600", ""), component("c", "600", "")));
    let before = ids(&["a", "b", "gone"]);
    env.clear_podman_log();

    let r = env.mcp(&["plan", &svc]);
    assert_eq!(r.code, 5, "pending changes: {}\n{}", r.stdout, r.stderr);
    for want in [&format!("{svc} on local: 4 changes"), "a                replace", "cmd: [\"sleep\",\"600\"] -> [\"sleep\",\"601\"]", "env.TOKEN: *** -> ***", "b                start", "c                create", "gone             remove"] {
        assert!(r.stdout.contains(want), "{want:?} in:\n{}", r.stdout);
    }
    assert!(!r.stdout.contains("secret") && !r.stderr.contains("secret"), "env values never shown: {}", r.stdout);
    let json = env.mcp(&["plan", &svc, "--json"]);
    assert_eq!(json.code, 5);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let actions: Vec<(String, String)> = v[0]["result"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["component"].as_str().unwrap().to_string(), c["action"].as_str().unwrap().to_string()))
        .collect();
    let has = |c: &str, a: &str| actions.contains(&(c.to_string(), a.to_string()));
    assert!(has("a", "replace") && has("b", "start") && has("c", "create") && has("gone", "remove"), "{actions:?}");
    // `sync --plan` says the same for every definition, and also changes nothing.
    let r = env.mcp(&["sync", "--plan"]);
    assert_eq!(r.code, 5, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("4 pending") && r.stdout.contains("replace a"), "{}", r.stdout);

    assert!(env.podman_mutations().is_empty(), "plan only reads: {:?}", env.podman_mutations());
    assert_eq!(ids(&["a", "b", "gone"]), before, "nothing was touched");
    assert!(env.container_id(&format!("{svc}-c")).is_none());
    assert_eq!(env.container_state(&format!("{svc}-b")).as_deref(), Some("exited"));

    // Deployed: nothing pending, exit 0.
    env.ok(&["deploy", &svc]);
    let r = env.mcp(&["plan", &svc]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no changes"), "{}", r.stdout);
    assert_eq!(env.mcp(&["sync", "--plan"]).code, 0);
    // --offline: the plan JSON, no node.
    let offline = env.ok(&["plan", "--offline", &svc]).json();
    assert_eq!(offline["name"], svc.as_str());
}
