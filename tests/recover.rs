//! `mcp recover` (#16.1): the outage of the system we descend from, replayed. Every container
//! of the node's services is removed behind the agent's back (what a lost podman database
//! does); one command brings each service back as the registry holds it, whatever its restart
//! policy, leaves desired-stopped components alone, and reports per service; a service that
//! cannot come back (its image is gone) is named and does not stop the others.

mod common;

use std::time::Duration;

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
    let back = |svc: &str| env.wait_event(svc, "repair", Duration::from_secs(60));
    let web_back = back(&web).expect("web recovered");
    assert!(web_back.contains("at the daemon's start") && web_back.contains("restart policy no"), "{web_back}");
    assert!(back(&pair).is_some_and(|m| m.contains(&format!("{pair}-a"))));
    assert_eq!(http_get(port, Duration::from_secs(20)).as_deref(), Some("hello from the test image\n"));
    assert_eq!(env.container_state(&format!("{pair}-a")).as_deref(), Some("running"));
    assert_eq!(env.container_state(&format!("{pair}-b")), None, "desired stopped: left alone");
    // Later drift is the restart policy's again: a kill now stays down (policy none).
    podman_ok(&["kill", &format!("{web}-web")]);
    env.wait_event(&web, "drift.stopped", Duration::from_secs(60)).expect("the kill is seen");
    assert_eq!(env.count_events(&web, "repair"), 1, "{:?}", env.events(&web));
    assert_eq!(env.container_state(&format!("{web}-web")).as_deref(), Some("exited"));
}
