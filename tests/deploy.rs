//! Deploy semantics end to end: the real `mcp` and `mcp-agent` binaries against real podman.

mod common;

use std::time::Duration;

use common::*;

const ANSWER: Duration = Duration::from_secs(20);

#[test]
fn deploy_serves_http_and_unchanged_redeploy_makes_no_mutation() {
    let env = Env::new();
    let svc = env.svc("hello");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, ""));

    let r = env.ok(&["deploy", &svc]);
    assert!(r.stdout.contains(&format!("{svc}: deployed on local (1 created)")), "{}", r.stdout);
    assert_eq!(http_get(port, ANSWER).as_deref(), Some("hello from the test image\n"));
    let id = env.container_id(&format!("{svc}-web")).expect("container exists");
    // Labels carry service, component and spec.
    let labels = podman_ok(&["inspect", "--format", "{{index .Config.Labels \"mcp.service\"}} {{index .Config.Labels \"mcp.component\"}} {{index .Config.Labels \"mcp.spec\"}}", &id]);
    let status = env.ok(&["status", &svc, "--json"]).json();
    let spec = status["nodes"][0]["result"]["services"][0]["components"][0]["spec"].as_str().unwrap().to_string();
    assert_eq!(labels, format!("{svc} web {spec}"));

    env.clear_podman_log();
    let r = env.ok(&["deploy", &svc]);
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
    assert_eq!(env.podman_mutations(), Vec::<String>::new(), "a no-op redeploy must not change anything");
    assert_eq!(env.container_id(&format!("{svc}-web")).as_deref(), Some(id.as_str()));

    let json = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(json["result"]["changes"][0]["change"], "unchanged");
}

#[test]
fn changed_component_is_replaced_and_the_other_left_alone() {
    let env = Env::new();
    let svc = env.svc("pair");
    let (pa, pb) = (free_port(), free_port());
    let def = |b_env: &str| {
        format!(
            "name = \"{svc}\"\n\
             [[components]]\nname = \"a\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{pa}:8080\"]\ncmd = {HTTPD_CMD}\n\
             [[components]]\nname = \"b\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{pb}:8080\"]\ncmd = {HTTPD_CMD}\nenv = {{ MODE = \"{b_env}\" }}\n"
        )
    };
    env.define(&svc, &def("one"));
    env.ok(&["deploy", &svc]);
    let a1 = env.container_id(&format!("{svc}-a")).unwrap();
    let b1 = env.container_id(&format!("{svc}-b")).unwrap();

    env.define(&svc, &def("two"));
    let r = env.ok(&["deploy", &svc, "--json"]).json();
    let changes = r["result"]["changes"].as_array().unwrap();
    assert_eq!(changes[0]["change"], "unchanged");
    assert_eq!(changes[1]["change"], "replaced");
    assert_eq!(env.container_id(&format!("{svc}-a")).unwrap(), a1, "a must not be touched");
    let b2 = env.container_id(&format!("{svc}-b")).unwrap();
    assert_ne!(b2, b1);
    let envs = podman_ok(&["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", &b2]);
    assert!(envs.lines().any(|l| l == "MODE=two"), "{envs}");
    assert!(http_get(pb, ANSWER).is_some());
    // The old container is gone, nothing left under a temporary name.
    assert_eq!(podman_ok(&["ps", "-a", "-q", "--filter", &format!("label=mcp.service={svc}")]).lines().count(), 2);
}

#[test]
fn failed_replacement_keeps_previous_version_running() {
    let env = Env::new();
    let svc = env.svc("rollback");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, ""));
    env.ok(&["deploy", &svc]);
    let id = env.container_id(&format!("{svc}-web")).unwrap();
    let before = env.ok(&["status", &svc, "--json"]).json();

    // 1: a command that does not exist; 2: a command that exits at once (restart policy
    // would bring it back in a loop); 3: an image that cannot be pulled.
    let bad = [
        http_service(&svc, port, "").replace("cmd = [\"sh\"", "cmd = [\"no-such-program\""),
        http_service(&svc, port, "restart = \"always\"").replace(HTTPD_CMD, r#"["sh", "-c", "sleep 0.2; exit 3"]"#),
        http_service(&svc, port, "").replace(IMAGE, "localhost/mcp-no-such-image:1"),
    ];
    for def in bad {
        env.define(&svc, &def);
        let r = env.mcp(&["deploy", &svc]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("the previous version was restored"), "{}", r.stderr);
        assert_eq!(env.container_id(&format!("{svc}-web")).as_deref(), Some(id.as_str()), "same container back");
        assert_eq!(env.container_state(&format!("{svc}-web")).as_deref(), Some("running"));
        assert_eq!(http_get(port, ANSWER).as_deref(), Some("hello from the test image\n"));
        let after = env.ok(&["status", &svc, "--json"]).json();
        let comp = |v: &serde_json::Value| v["nodes"][0]["result"]["services"][0]["components"][0].clone();
        assert_eq!(comp(&after)["spec"], comp(&before)["spec"], "registry keeps the previous spec");
        assert!(comp(&after)["drift"].is_null(), "{after}");
        assert_eq!(podman_ok(&["ps", "-a", "-q", "--filter", &format!("label=mcp.service={svc}")]).lines().count(), 1);
    }
    let st = env.ok(&["status", &svc, "--events", "20"]).stdout;
    assert!(st.contains("deploy_failed"), "{st}");
}

#[test]
fn removed_component_is_removed_and_inactive_service_stops() {
    let env = Env::new();
    let svc = env.svc("shrink");
    let (pa, pb) = (free_port(), free_port());
    let two = format!(
        "name = \"{svc}\"\n[[components]]\nname = \"a\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{pa}:8080\"]\ncmd = {HTTPD_CMD}\n\
         [[components]]\nname = \"b\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{pb}:8080\"]\ncmd = {HTTPD_CMD}\n"
    );
    env.define(&svc, &two);
    env.ok(&["deploy", &svc]);
    assert!(env.container_id(&format!("{svc}-b")).is_some());

    env.define(&svc, &http_service(&svc, pa, "").replace("name = \"web\"", "name = \"a\""));
    let r = env.ok(&["deploy", &svc]);
    assert!(r.stdout.contains("removed"), "{}", r.stdout);
    assert_eq!(env.container_id(&format!("{svc}-b")), None);
    assert!(env.container_id(&format!("{svc}-a")).is_some());

    // active = false: stopped, definition kept.
    let inactive = http_service(&svc, pa, "").replace("name = \"web\"", "name = \"a\"").replace("node = \"local\"", "node = \"local\"\nactive = false");
    env.define(&svc, &inactive);
    let r = env.ok(&["deploy", &svc]);
    assert!(r.stdout.contains("stopped"), "{}", r.stdout);
    assert_eq!(env.container_state(&format!("{svc}-a")).as_deref(), Some("exited"));
    let list = env.ok(&["list", "--json"]).json();
    let s = list["nodes"][0]["result"]["services"].as_array().unwrap().iter().find(|s| s["name"] == svc.as_str()).unwrap().clone();
    assert_eq!(s["active"], false);
    assert_eq!(s["components"][0]["desired"], "stopped");
    let st = env.ok(&["status", &svc, "--json"]).json();
    assert!(st["nodes"][0]["result"]["services"][0]["components"][0]["drift"].is_null(), "{st}");
}

#[test]
fn deploy_of_one_component_touches_only_it() {
    let env = Env::new();
    let svc = env.svc("scoped");
    let (pa, pb) = (free_port(), free_port());
    let def = |tag: &str| {
        format!(
            "name = \"{svc}\"\n[[components]]\nname = \"a\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{pa}:8080\"]\ncmd = {HTTPD_CMD}\nenv = {{ T = \"{tag}\" }}\n\
             [[components]]\nname = \"b\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{pb}:8080\"]\ncmd = {HTTPD_CMD}\nenv = {{ T = \"{tag}\" }}\n"
        )
    };
    env.define(&svc, &def("1"));
    env.ok(&["deploy", &format!("{svc}/a")]);
    assert!(env.container_id(&format!("{svc}-a")).is_some());
    assert_eq!(env.container_id(&format!("{svc}-b")), None, "b was not asked for");
    env.ok(&["deploy", &svc]);
    let a1 = env.container_id(&format!("{svc}-a")).unwrap();
    let b1 = env.container_id(&format!("{svc}-b")).unwrap();

    env.define(&svc, &def("2"));
    let r = env.ok(&["deploy", &format!("{svc}/b"), "--json"]).json();
    assert_eq!(r["result"]["changes"].as_array().unwrap().len(), 1);
    assert_eq!(r["result"]["changes"][0]["component"], "b");
    assert_eq!(env.container_id(&format!("{svc}-a")).unwrap(), a1);
    assert_ne!(env.container_id(&format!("{svc}-b")).unwrap(), b1);
    // The registry still holds a's old spec: a full deploy now replaces a only.
    let r = env.ok(&["deploy", &svc, "--json"]).json();
    let kinds: Vec<&str> = r["result"]["changes"].as_array().unwrap().iter().map(|c| c["change"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["replaced", "unchanged"]);

    let r = env.mcp(&["deploy", &format!("{svc}/nope")]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("no component \"nope\""), "{}", r.stderr);
}

#[test]
fn stop_start_restart_ps_and_status() {
    let env = Env::new();
    let svc = env.svc("life");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, ""));
    env.ok(&["deploy", &svc]);
    let name = format!("{svc}-web");

    let r = env.ok(&["stop", &svc]);
    assert!(r.stdout.contains("1 stopped"), "{}", r.stdout);
    assert_eq!(env.container_state(&name).as_deref(), Some("exited"));
    let st = env.ok(&["status", &svc, "--json"]).json();
    let c = &st["nodes"][0]["result"]["services"][0]["components"][0];
    assert_eq!((c["desired"].as_str(), c["observed"].as_str()), (Some("stopped"), Some("exited")));

    // A second stop is a no-op.
    env.clear_podman_log();
    assert!(env.ok(&["stop", &svc]).stdout.contains("unchanged"));
    assert_eq!(env.podman_mutations(), Vec::<String>::new());

    env.ok(&["start", &format!("{svc}/web")]);
    assert_eq!(env.container_state(&name).as_deref(), Some("running"));
    assert!(http_get(port, ANSWER).is_some());

    let ps = env.ok(&["ps", "--json"]).json();
    let row = ps["nodes"][0]["result"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == name.as_str()).unwrap().clone();
    assert_eq!(row["state"], "running");
    assert!(row["uptime_secs"].as_u64().is_some());
    let before = podman_ok(&["inspect", "--format", "{{.State.StartedAt}}", &name]);
    let r = env.ok(&["restart", &svc, "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "restarted");
    assert_ne!(podman_ok(&["inspect", "--format", "{{.State.StartedAt}}", &name]), before);

    let table = env.ok(&["ps"]).stdout;
    assert!(table.starts_with("NAME") && table.contains(&name), "{table}");
    // #16.5: the version each instance runs (its image's tag), and a warning for a floating tag.
    let cols: Vec<&str> = table.lines().find(|l| l.starts_with(&name)).unwrap().split_whitespace().collect();
    let at = cols.iter().position(|c| *c == IMAGE).unwrap();
    assert!(table.contains(" VERSION ") && cols[at + 1] == "latest", "{table}");
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("warning: {svc}/web: image {IMAGE} is :latest")), "{}", r.stderr);
    let status = env.ok(&["status", &svc]).stdout;
    for kind in ["created", "stopped", "started", "restarted"] {
        assert!(status.contains(kind), "{kind} event missing:\n{status}");
    }

    // Drift visible at query time: the container is killed behind mcp's back.
    podman_ok(&["kill", &name]);
    let st = env.ok(&["status", &svc, "--json"]).json();
    let drift = st["nodes"][0]["result"]["services"][0]["components"][0]["drift"].as_str().unwrap_or("").to_string();
    assert!(drift.starts_with("not running"), "{st}");

    let r = env.mcp(&["stop", "no-such-service-here"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("is not deployed"), "{}", r.stderr);
}

#[test]
fn unmanaged_container_under_the_name_is_not_touched() {
    let env = Env::new();
    let svc = env.svc("squat");
    let port = free_port();
    let squatter = podman_ok(&["run", "-d", "--name", &format!("{svc}-web"), IMAGE, "sleep", "300"]);
    env.define(&svc, &http_service(&svc, port, ""));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("does not belong to mcp") && r.stderr.contains("mcp adopt"), "{}", r.stderr);
    assert_eq!(env.container_id(&format!("{svc}-web")).as_deref(), Some(squatter.as_str()));
    assert_eq!(env.container_state(&format!("{svc}-web")).as_deref(), Some("running"));
    let list = env.ok(&["list", "--json"]).json();
    assert!(list["nodes"][0]["result"]["services"].as_array().unwrap().is_empty(), "nothing recorded: {list}");
}

#[test]
fn registry_lost_but_containers_labelled_are_found_again() {
    let env = Env::new();
    let svc = env.svc("amnesia");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, ""));
    env.ok(&["deploy", &svc]);
    let id = env.container_id(&format!("{svc}-web")).unwrap();
    std::fs::remove_dir_all(&env.state).unwrap();
    // The registry is new, the container carries the same spec label: kept, not recreated.
    let r = env.ok(&["deploy", &svc]);
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
    assert_eq!(env.container_id(&format!("{svc}-web")).unwrap(), id);
}

#[test]
fn secrets_in_env_stay_out_of_argv_output_and_events() {
    let env = Env::new();
    let svc = env.svc("secret");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, "env = { API_TOKEN = \"s3cr3t-value-42\" }"));
    let r = env.ok(&["deploy", &svc]);
    assert!(!r.stdout.contains("s3cr3t") && !r.stderr.contains("s3cr3t"));
    let id = env.container_id(&format!("{svc}-web")).unwrap();
    let envs = podman_ok(&["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", &id]);
    assert!(envs.contains("API_TOKEN=s3cr3t-value-42"), "the container gets it: {envs}");
    let calls = env.podman_calls().join("\n");
    assert!(!calls.contains("s3cr3t"), "argv must not carry secrets: {calls}");
    let status = env.ok(&["status", &svc, "--json", "--events", "50"]).stdout;
    assert!(!status.contains("s3cr3t"));
    // The env file was deleted after use.
    let scratch = env.state.join("scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn missing_network_is_created() {
    let env = Env::new();
    let svc = env.svc("net");
    let net = format!("{}-net", env.prefix);
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, &format!("network = \"{net}\"")));
    env.ok(&["deploy", &svc]);
    assert!(http_get(port, ANSWER).is_some());
    assert!(podman(&["network", "exists", &net]).status.success());
    env.ok(&["stop", &svc]);
    // Clean the container first, then the network it made.
    drop(env);
    let _ = podman(&["network", "rm", "-f", &net]);
}
