//! `mcp recover` (#16.1): the outage of the system we descend from, replayed. Every container
//! of the node's services is removed behind the agent's back (what a lost podman database
//! does); one command brings each service back as the registry holds it, whatever its restart
//! policy, leaves desired-stopped components alone, and reports per service; a service that
//! cannot come back (its image is gone) is named and does not stop the others.

mod common;

use std::time::Duration;

use common::registry::Registry;
use common::*;

#[test]
fn recover_brings_back_every_service_from_the_registry_alone() {
    let env = Env::new();
    let (web, pair, lost) = (env.svc("web"), env.svc("pair"), env.svc("lost"));
    let port = free_port();
    env.define(&web, &http_service(&web, port, "stop_timeout = 1"));
    let sleeper = |name: &str| format!("[[components]]\nname = \"{name}\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n");
    env.define(&pair, &format!("name = \"{pair}\"\nnode = \"local\"\n{}{}", sleeper("a"), sleeper("b")));
    // A service whose image will be gone when it is recovered.
    let gone = format!("localhost/mcp-recover-{}:1", env.prefix);
    podman_ok(&["tag", IMAGE, &gone]);
    env.define(&lost, &format!("name = \"{lost}\"\nnode = \"local\"\n[[components]]\nname = \"app\"\nimage = \"{gone}\"\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n"));
    for svc in [&web, &pair, &lost] {
        env.ok(&["deploy", svc]);
    }
    env.ok(&["stop", &format!("{pair}/b")]);
    // The node loses its containers (and one image); the registry and the definitions stay,
    // but recovery reads only the registry: the definitions go too.
    let ours = podman_ok(&["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("name=^{}-", env.prefix)]);
    let names: Vec<&str> = ours.lines().collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let mut rm = vec!["rm", "-f", "-t", "0"];
    rm.extend(&names);
    podman_ok(&rm);
    podman_ok(&["rmi", &gone]);
    std::fs::remove_dir_all(&env.services).unwrap();
    std::fs::create_dir_all(&env.services).unwrap();

    let r = env.mcp(&["recover", "--json"]);
    assert_ne!(r.code, 0, "one service could not be recovered: {}", r.stderr);
    let out = r.json();
    let services = out["nodes"][0]["result"]["services"].as_array().unwrap().clone();
    let of = |svc: &str| services.iter().find(|s| s["service"] == svc).cloned().unwrap_or_else(|| panic!("{svc}: {out}"));
    let changes = |svc: &str| -> Vec<(String, String)> {
        of(svc)["changes"].as_array().unwrap().iter().map(|c| (c["component"].as_str().unwrap().into(), c["change"].as_str().unwrap().into())).collect()
    };
    assert_eq!(changes(&web), vec![("web".to_string(), "created".to_string())], "restart policy none: recovered all the same");
    assert!(changes(&pair).contains(&("a".into(), "created".into())) && !changes(&pair).iter().any(|(c, k)| c == "b" && k != "unchanged"), "{:?}", changes(&pair));
    assert!(of(&lost)["error"].as_str().is_some_and(|e| e.contains(&gone)), "{}", of(&lost));
    assert_eq!(http_get(port, Duration::from_secs(20)).as_deref(), Some("hello from the test image\n"));
    assert_eq!(env.container_state(&format!("{pair}-a")).as_deref(), Some("running"));
    assert_eq!(env.container_state(&format!("{pair}-b")), None, "desired stopped: left alone");

    // Once the image is back, recover finishes the job; then there is nothing left to do.
    podman_ok(&["tag", IMAGE, &gone]);
    let again = env.mcp(&["recover"]);
    podman_ok(&["rmi", "-f", &gone]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains(&format!("{lost}: created app")) && again.stdout.contains(&format!("{web}: as registered already")), "{}", again.stdout);
    assert_eq!(env.container_state(&format!("{lost}-app")).as_deref(), Some("running"));
}

fn sleeper_service(name: &str, image: &str) -> String {
    format!("name = \"{name}\"\nnode = \"local\"\n[[components]]\nname = \"app\"\nimage = \"{image}\"\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n")
}

/// Every container of this test's services, removed behind the agent's back.
fn lose_containers(env: &Env) {
    let ours = podman_ok(&["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("name=^{}-", env.prefix)]);
    let mut rm = vec!["rm", "-f", "-t", "0"];
    rm.extend(ours.lines());
    if rm.len() > 4 {
        podman_ok(&rm);
    }
}

/// The events of `service` with their ids (which order events across services).
fn events_with_ids(env: &Env, service: &str) -> Vec<(i64, String, String)> {
    let st = env.ok(&["status", service, "--json", "--events", "1000"]).json();
    let events = st["nodes"][0]["result"]["services"][0]["events"].as_array().cloned().unwrap_or_default();
    events.iter().map(|e| (e["id"].as_i64().unwrap(), e["kind"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string())).collect()
}

/// The id of the first event of `kind` of `service`.
fn event_id(env: &Env, service: &str, kind: &str) -> i64 {
    let all = events_with_ids(env, service);
    all.iter().find(|(_, k, _)| k == kind).map(|(id, _, _)| *id).unwrap_or_else(|| panic!("{service}: no {kind} event in {all:?}"))
}

/// #16.2: boot order. A daemon starting after the node lost everything brings the services
/// back stage by stage (the event ids prove the order); then, with the first stage's image
/// gone, `mcp recover` fails that required stage, says why, and starts nothing after it.
#[test]
fn recovery_follows_the_boot_stages_and_a_failed_required_stage_stops_the_rest() {
    let env = Env::new();
    let (dns, db, web) = (env.svc("dns"), env.svc("db"), env.svc("web"));
    let dns_image = format!("localhost/mcp-boot-{}:1", env.prefix);
    podman_ok(&["tag", IMAGE, &dns_image]);
    let port = free_port();
    env.define(&dns, &sleeper_service(&dns, &dns_image));
    env.define(&db, &sleeper_service(&db, IMAGE));
    env.define(&web, &http_service(&web, port, "stop_timeout = 1"));
    for svc in [&web, &db, &dns] {
        env.ok(&["deploy", svc]);
    }
    std::fs::write(
        env.state.join("agent.toml"),
        format!(
            "[[boot.sequence]]\nname = \"foundation\"\nservices = [\"{dns}\", \"not-on-this-node\"]\nrequired = true\ntimeout = \"60s\"\n\n\
             [[boot.sequence]]\nname = \"core\"\nservices = [\"{db}\"]\n"
        ),
    )
    .unwrap();
    lose_containers(&env);

    let mut daemon = env.start_daemon(&[]);
    env.wait_event(&web, "recovered", Duration::from_secs(90)).unwrap_or_else(|| panic!("web not recovered; log:\n{}", daemon.log_text()));
    let dns_up = event_id(&env, &dns, "stage.up");
    assert!(event_id(&env, &dns, "stage.started") < event_id(&env, &dns, "recovered") && event_id(&env, &dns, "recovered") < dns_up);
    assert!(dns_up < event_id(&env, &db, "stage.started"), "core starts once foundation is up");
    assert!(event_id(&env, &db, "stage.up") < event_id(&env, &web, "recovered"), "the rest comes last");
    assert_eq!(env.count_events(&web, "stage.started"), 0, "the rest has no stage events");
    assert_eq!(http_get(port, Duration::from_secs(20)).as_deref(), Some("hello from the test image\n"));
    for svc in [&dns, &db] {
        assert_eq!(env.container_state(&format!("{svc}-app")).as_deref(), Some("running"));
    }
    daemon.stop();

    // The foundation cannot come back (its image is gone): nothing after it is started.
    lose_containers(&env);
    podman_ok(&["rmi", &dns_image]);
    let r = env.mcp(&["recover", "--json"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let out = r.json();
    let stages: Vec<(String, String)> = out["nodes"][0]["result"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().to_string()))
        .collect();
    let expect = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(stages, expect(&[("foundation", "failed"), ("core", "blocked"), ("rest", "blocked")]), "{out}");
    let why = out["nodes"][0]["result"]["stages"][0]["message"].as_str().unwrap();
    assert!(why.contains(&dns_image), "{why}");
    assert!(events_with_ids(&env, &db).iter().any(|(_, k, m)| k == "stage.blocked" && m.contains("required boot stage foundation did not come up")));
    assert_eq!(env.container_state(&format!("{db}-app")), None);
    assert_eq!(env.container_state(&format!("{web}-web")), None);
    // In words too.
    let r = env.mcp(&["recover"]);
    assert!(r.stdout.contains("stage foundation (required): failed") && r.stdout.contains("stage core (optional): blocked"), "{}", r.stdout);
}

/// #16.1: recovery with the image registry down uses the images the node has (also for
/// `pull = "always"`, which a deploy would pull).
#[test]
fn recovery_uses_cached_images_when_the_registry_is_down() {
    let env = Env::new();
    let mut reg = Registry::start(&env.dir.path().join("registry"));
    let tag = reg.push(IMAGE, &format!("mcp/{}:1", env.prefix));
    let r = env.mcp_stdin(&["registry", "login", &reg.address(), "--ca-file", reg.ca.to_str().unwrap(), "-u", &reg.user, "--password-stdin"], &reg.password);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (always, missing) = (env.svc("always"), env.svc("missing"));
    let (pa, pm) = (free_port(), free_port());
    env.define(&always, &http_service(&always, pa, "stop_timeout = 0\npull = \"always\"").replace(IMAGE, &tag));
    env.define(&missing, &http_service(&missing, pm, "stop_timeout = 0").replace(IMAGE, &tag));
    env.ok(&["deploy", &always]);
    env.ok(&["deploy", &missing]);
    reg.stop();
    lose_containers(&env);
    let r = env.mcp(&["recover"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for port in [pa, pm] {
        assert_eq!(http_get(port, Duration::from_secs(20)).as_deref(), Some("hello from the test image\n"));
    }
    for svc in [&always, &missing] {
        let _ = env.mcp(&["stop", svc]);
    }
    let _ = podman(&["rmi", "-f", &tag]);
}

/// #16.1: a reboot's effect. The daemon is down while every container of the node's services
/// goes; when it starts, its first look brings each desired-running component back whatever
/// its restart policy (here none), records why, and leaves a desired-stopped one alone.
#[test]
fn a_starting_daemon_recovers_what_the_node_lost() {
    let env = Env::new();
    let (web, pair) = (env.svc("boot"), env.svc("bootpair"));
    let port = free_port();
    env.define(&web, &http_service(&web, port, "stop_timeout = 1"));
    let sleeper = |name: &str| format!("[[components]]\nname = \"{name}\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n");
    env.define(&pair, &format!("name = \"{pair}\"\nnode = \"local\"\n{}{}", sleeper("a"), sleeper("b")));
    env.ok(&["deploy", &web]);
    env.ok(&["deploy", &pair]);
    env.ok(&["stop", &format!("{pair}/b")]);
    // One removed, one merely exited (as after a reboot with podman's database kept).
    podman_ok(&["rm", "-f", "-t", "0", &format!("{web}-web"), &format!("{pair}-b")]);
    podman_ok(&["stop", "-t", "0", &format!("{pair}-a")]);
    let _daemon = env.start_daemon(&[]);
    let back = |svc: &str| env.wait_event(svc, "recovered", Duration::from_secs(60));
    let web_back = back(&web).expect("web recovered");
    assert!(web_back.contains("at the daemon's start") && web_back.contains("created web"), "{web_back}");
    // What was found is recorded first: the history says what the node lost.
    let kinds: Vec<String> = env.events(&web).into_iter().map(|(k, _)| k).collect();
    let at = |kind: &str| kinds.iter().position(|k| k == kind).unwrap_or_else(|| panic!("no {kind} in {kinds:?}"));
    assert!(at("drift.missing") < at("recovered"), "{kinds:?}");
    assert!(back(&pair).is_some_and(|m| m.contains("started a") && !m.contains(" b")), "{:?}", env.events(&pair));
    assert_eq!(http_get(port, Duration::from_secs(20)).as_deref(), Some("hello from the test image\n"));
    assert_eq!(env.container_state(&format!("{pair}-a")).as_deref(), Some("running"));
    assert_eq!(env.container_state(&format!("{pair}-b")), None, "desired stopped: left alone");
    // Later drift is the restart policy's again: a kill now stays down (policy none).
    podman_ok(&["kill", &format!("{web}-web")]);
    env.wait_event(&web, "drift.stopped", Duration::from_secs(60)).expect("the kill is seen");
    assert_eq!((env.count_events(&web, "repair"), env.count_events(&web, "recovered")), (0, 1), "{:?}", env.events(&web));
    assert_eq!(env.container_state(&format!("{web}-web")).as_deref(), Some("exited"));
}
