//! The agent keeps services true: `mcp-agent serve` on real podman. Drift is recorded once per
//! transition, the restart policy brings components back, the alert hook gets the events, the
//! daemon survives its event stream dying and its own restart, and `mcp logs` streams output.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(20);

/// A component printing a numbered line every 200 ms; exits at once on SIGTERM.
fn ticker(name: &str, component: &str, restart: Option<&str>) -> String {
    let restart = restart.map(|r| format!("restart = \"{r}\"\n")).unwrap_or_default();
    format!(
        "[[components]]\nname = \"{component}\"\nimage = \"{IMAGE}\"\n{restart}\
         cmd = [\"sh\", \"-c\", \"trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo {name} tick $i; sleep 0.2; done\"]\n"
    )
}

fn service(name: &str, components: &[String]) -> String {
    format!("name = \"{name}\"\nnode = \"local\"\n\n{}", components.join("\n"))
}

#[test]
fn killed_and_removed_containers_come_back_by_restart_policy() {
    let env = Env::new();
    let svc = env.svc("heal");
    env.define(&svc, &service(&svc, &[ticker(&svc, "web", Some("always"))]));
    env.ok(&["deploy", &svc]);
    let _daemon = env.start_daemon(&[]);
    let name = format!("{svc}-web");
    let id = env.container_id(&name).unwrap();

    podman_ok(&["kill", &name]);
    let repair = env.wait_event(&svc, "repair", DEADLINE).expect("a repair event after podman kill");
    assert!(repair.contains("restarted") && repair.contains("policy always"), "{repair}");
    assert_eq!(env.count_events(&svc, "drift.stopped"), 1);
    assert!(wait_for(DEADLINE, || (env.container_state(&name).as_deref() == Some("running")).then_some(())).is_some());
    assert_eq!(env.container_id(&name).unwrap(), id, "a killed container is started again, not replaced");
    // The monitor sees it back before the next disruption (else it records stopped -> missing).
    env.wait_event(&svc, "drift.resolved", DEADLINE).expect("drift resolved after the repair");

    podman_ok(&["rm", "-f", "-t", "0", &name]);
    let recreated = wait_for(DEADLINE, || {
        env.events(&svc).into_iter().find(|(k, m)| k == "repair" && m.contains("recreated")).map(|(_, m)| m)
    });
    assert!(recreated.is_some(), "podman rm -f is repaired: {:?}", env.events(&svc));
    let new_id = wait_for(DEADLINE, || {
        env.container_id(&name).filter(|_| env.container_state(&name).as_deref() == Some("running"))
    })
    .expect("recreated and running");
    assert_ne!(new_id, id);
    let labels = podman_ok(&["inspect", "--format", "{{index .Config.Labels \"mcp.service\"}}", &name]);
    assert_eq!(labels, svc, "recreated with mcp's labels");

    // status shows the repairs; once healthy, drift is resolved.
    let web = wait_for(DEADLINE, || {
        let st = env.ok(&["status", &svc, "--json"]).json();
        let web = st["nodes"][0]["result"]["services"][0]["components"][0].clone();
        (web["drift"].is_null() && web["repairs"] == 2).then_some(web)
    });
    assert!(web.is_some(), "{:?}", env.events(&svc));
    let resolved = wait_for(DEADLINE, || (env.count_events(&svc, "drift.resolved") >= 2).then_some(()));
    assert!(resolved.is_some(), "{:?}", env.events(&svc));
    let table = env.ok(&["status", &svc]).stdout;
    assert!(table.contains("REPAIRS") && table.contains("repair"), "{table}");
}

#[test]
fn drift_is_recorded_once_per_transition_and_foreign_containers_are_left_alone() {
    let env = Env::new();
    let svc = env.svc("drift");
    env.define(&svc, &service(&svc, &[ticker(&svc, "web", None)]));
    env.ok(&["deploy", &svc]);
    // Sweeps every second: drift that persists must still give one event.
    let _daemon = env.start_daemon(&["--sweep-secs", "1"]);
    let name = format!("{svc}-web");

    podman_ok(&["kill", &name]);
    let m = env.wait_event(&svc, "drift.stopped", DEADLINE).expect("drift.stopped");
    assert!(m.contains("exit code 137"), "{m}");

    // A container with the service's labels that the registry does not know: orphan.
    let ghost = format!("{svc}-ghost");
    podman_ok(&[
        "run", "-d", "--name", &ghost, "--label", &format!("mcp.service={svc}"), "--label", "mcp.component=ghost",
        "--label", "mcp.spec=0000", IMAGE, "sleep", "600",
    ]);
    env.wait_event(&svc, "drift.orphan", DEADLINE).expect("drift.orphan");
    // Several sweeps later (the orphan's event came from a later one): still one event, and
    // restart = "no" means no repair.
    let sweeps = wait_for(DEADLINE, || env.ok(&["status", &svc, "--json"]).json().to_string().contains("\"orphan\"").then_some(()));
    assert!(sweeps.is_some());
    assert_eq!(env.count_events(&svc, "drift.stopped"), 1, "{:?}", env.events(&svc));
    assert_eq!(env.count_events(&svc, "repair"), 0);
    assert_eq!(env.container_state(&name).as_deref(), Some("exited"));

    // Removed outside mcp: missing. Then an unmanaged container takes the name: unmanaged.
    podman_ok(&["rm", "-f", "-t", "0", &name]);
    env.wait_event(&svc, "drift.missing", DEADLINE).expect("drift.missing");
    podman_ok(&["run", "-d", "--name", &name, IMAGE, "sleep", "600"]);
    let m = env.wait_event(&svc, "drift.unmanaged", DEADLINE).expect("drift.unmanaged");
    assert!(m.contains("was not created by mcp"), "{m}");
    let squatter = env.container_id(&name).unwrap();

    // A container under the name with mcp labels but another spec: changed outside mcp.
    podman_ok(&["rm", "-f", "-t", "0", &name]);
    podman_ok(&[
        "run", "-d", "--name", &name, "--label", &format!("mcp.service={svc}"), "--label", "mcp.component=web",
        "--label", "mcp.spec=feedfeedfeedfeed", IMAGE, "sleep", "600",
    ]);
    let m = env.wait_event(&svc, "drift.spec", DEADLINE).expect("drift.spec");
    assert!(m.contains("feedfeedfeedfeed"), "{m}");
    let st = env.ok(&["status", &svc, "--json"]).json();
    let web = &st["nodes"][0]["result"]["services"][0]["components"][0];
    assert_eq!(web["drift_kind"], "spec", "{st}");
    let hash = web["spec"].as_str().unwrap().to_string();

    // Made by hand with the very labels mcp would give it, but another command: the label
    // alone does not make it the spec.
    // (A sweep between the `rm` and the `run` above may have seen it missing too.)
    let missing_before = env.count_events(&svc, "drift.missing");
    podman_ok(&["rm", "-f", "-t", "0", &name]);
    let missing_again = wait_for(DEADLINE, || (env.count_events(&svc, "drift.missing") > missing_before).then_some(()));
    assert!(missing_again.is_some(), "{:?}", env.events(&svc));
    podman_ok(&[
        "run", "-d", "--name", &name, "--label", &format!("mcp.service={svc}"), "--label", "mcp.component=web",
        "--label", &format!("mcp.spec={hash}"), IMAGE, "sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait",
    ]);
    let forged = wait_for(DEADLINE, || {
        env.events(&svc).into_iter().find(|(k, m)| k == "drift.spec" && m.contains("command")).map(|(_, m)| m)
    })
    .expect("drift.spec for the forged container");
    assert!(forged.contains("command [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"], registry has [\"sh\", \"-c\", \"trap"), "{forged}");
    // None of these were touched by the agent.
    assert_ne!(env.container_id(&name).unwrap(), squatter);
    assert!(env.podman_mutations().iter().all(|c| !c.starts_with("rm ") && !c.starts_with("start ")), "{:?}", env.podman_mutations());
    // A deploy puts the real spec back in its place. (The ghost goes first: as a container of
    // this service outside its definition the deploy would remove it, waiting out `sleep`.)
    podman_ok(&["rm", "-f", "-t", "0", &ghost]);
    assert_eq!(env.ok(&["deploy", &svc, "--json"]).json()["result"]["changes"][0]["change"], "replaced");
    let web = env.ok(&["status", &svc, "--json"]).json()["nodes"][0]["result"]["services"][0]["components"][0].clone();
    assert!(web["drift"].is_null(), "{web}");
}

#[test]
fn alert_hook_gets_each_event_as_json_and_its_failures_are_recorded() {
    let env = Env::new();
    let svc = env.svc("alert");
    env.define(&svc, &service(&svc, &[ticker(&svc, "web", None)]));
    env.ok(&["deploy", &svc]);
    let out = env.dir.path().join("alerts");
    std::fs::create_dir_all(&out).unwrap();
    let hook = env.dir.path().join("hook.sh");
    // Saves stdin and the environment per event, then fails: the failure must be recorded and
    // the next event still alerted.
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nf='{o}'/$MCP_SERVICE-$MCP_EVENT_ID\ncat > $f.json\nenv | grep ^MCP_ > $f.env\necho \"arg=$1\" >> $f.env\necho 'pager unreachable' >&2\nexit 3\n",
            o = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = env.dir.path().join("agent.toml");
    std::fs::write(&conf, format!("[alert]\ncommand = [\"{}\", \"--team=ops\"]\ntimeout_secs = 5\n", hook.display())).unwrap();
    let _daemon = env.start_daemon(&["--config", conf.to_str().unwrap()]);

    // This node's podman also runs other tests' containers: to this agent they are orphans
    // of unknown services, alerted on too. Only this service's alerts are looked at.
    let ours = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{svc}-"));
    podman_ok(&["kill", &format!("{svc}-web")]);
    let json_file = wait_for(DEADLINE, || {
        std::fs::read_dir(&out).unwrap().flatten().map(|e| e.path()).find(|p| ours(p) && p.extension().is_some_and(|e| e == "json"))
    })
    .expect("the hook ran");
    let event: serde_json::Value = wait_for(DEADLINE, || serde_json::from_str(&std::fs::read_to_string(&json_file).ok()?).ok()).unwrap();
    assert_eq!(event["kind"], "drift.stopped");
    assert_eq!(event["service"], svc.as_str());
    assert_eq!(event["component"], "web");
    let env_file = json_file.with_extension("env");
    let vars = wait_for(DEADLINE, || std::fs::read_to_string(&env_file).ok().filter(|t| t.contains("arg="))).unwrap();
    assert!(vars.contains("MCP_EVENT_KIND=drift.stopped"), "{vars}");
    assert!(vars.contains(&format!("MCP_SERVICE={svc}")), "{vars}");
    assert!(vars.contains("arg=--team=ops"), "{vars}");

    let failed = env.wait_event(&svc, "alert.failed", DEADLINE).expect("the hook's failure is recorded");
    assert!(failed.contains("exit status: 3") && failed.contains("pager unreachable"), "{failed}");
    // Still alerting (and not on its own failures).
    podman_ok(&["run", "-d", "--name", &format!("{svc}-stray"), IMAGE, "sleep", "600"]);
    env.wait_event(&svc, "drift.unmanaged", DEADLINE).expect("drift.unmanaged");
    let alerted = || -> Vec<String> {
        let mut kinds: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| ours(&e.path()) && e.path().extension().is_some_and(|x| x == "env"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("MCP_EVENT_KIND=").map(str::to_string)))
            .collect();
        kinds.sort();
        kinds
    };
    let hooked = wait_for(DEADLINE, || {
        let kinds = alerted();
        kinds.contains(&"drift.unmanaged".to_string()).then_some(kinds)
    });
    let kinds = hooked.unwrap_or_else(alerted);
    assert!(kinds.contains(&"drift.stopped".into()) && kinds.contains(&"drift.unmanaged".into()), "{kinds:?}");
    assert!(kinds.iter().all(|k| k.starts_with("drift.")), "never on its own failures: {kinds:?}; {:?}", env.events(&svc));
}

#[test]
fn agent_restart_neither_loses_nor_duplicates_events() {
    let env = Env::new();
    let svc = env.svc("restart");
    env.define(&svc, &service(&svc, &[ticker(&svc, "a", None), ticker(&svc, "b", None)]));
    env.ok(&["deploy", &svc]);
    let mut daemon = env.start_daemon(&[]);
    podman_ok(&["kill", &format!("{svc}-a")]);
    env.wait_event(&svc, "drift.stopped", DEADLINE).expect("drift of a");

    // Killed hard: no chance to clean up its socket; its event follower must not survive it.
    let follower = daemon.follower().expect("follower");
    signal(daemon.pid(), libc::SIGKILL);
    daemon.child.wait().unwrap();
    assert!(wait_for(DEADLINE, || (!std::path::Path::new(&format!("/proc/{follower}")).exists()).then_some(())).is_some());

    // While it is down: b dies, and the registry is served by a standalone agent.
    podman_ok(&["kill", &format!("{svc}-b")]);
    assert_eq!(env.count_events(&svc, "drift.stopped"), 1);

    let _daemon = env.start_daemon(&[]);
    let both = wait_for(DEADLINE, || (env.count_events(&svc, "drift.stopped") == 2).then_some(()));
    assert!(both.is_some(), "b's drift is found after the restart: {:?}", env.events(&svc));
    let stopped: Vec<String> =
        env.events(&svc).into_iter().filter(|(k, _)| k == "drift.stopped").map(|(_, m)| m).collect();
    assert!(stopped[0].starts_with(&format!("{svc}-a:")) && stopped[1].starts_with(&format!("{svc}-b:")), "{stopped:?}");
}

#[test]
fn the_daemon_survives_its_event_stream_dying() {
    let env = Env::new();
    let svc = env.svc("follow");
    env.define(&svc, &service(&svc, &[ticker(&svc, "web", Some("always"))]));
    env.ok(&["deploy", &svc]);
    // No periodic sweep within the test: only events can find the kill below.
    let daemon = env.start_daemon(&["--sweep-secs", "3600"]);
    let first = daemon.follower().unwrap();
    signal(first, libc::SIGKILL);
    let second = wait_for(DEADLINE, || daemon.follower().filter(|p| *p != first)).expect("the follower is started again");
    assert_ne!(first, second);
    podman_ok(&["kill", &format!("{svc}-web")]);
    env.wait_event(&svc, "repair", DEADLINE).expect("events still reach the monitor");
    assert!(daemon.log_text().contains("event stream ended"), "{}", daemon.log_text());
}

#[test]
fn rpc_forwards_to_the_daemon_and_its_socket_is_private() {
    let env = Env::new();
    let hello = |state: &std::path::Path| -> serde_json::Value {
        let mut child = Command::new(AGENT)
            .arg("rpc")
            .arg("--state-dir")
            .arg(state)
            .arg("--podman")
            .arg(env.podman_wrapper())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, r#"{{"id":1,"method":"hello","params":{{"protocol":1,"client":"test"}}}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        drop(stdin);
        child.wait().unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["result"].clone()
    };
    assert_eq!(hello(&env.state)["daemon"], false);
    let mut daemon = env.start_daemon(&[]);
    assert_eq!(hello(&env.state)["daemon"], true);
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert_eq!(std::fs::metadata(&env.state).unwrap().permissions().mode() & 0o777, 0o700);
    // A second daemon on the same state dir refuses to start.
    let second = Command::new(AGENT).arg("serve").arg("--state-dir").arg(&env.state).output().unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another `mcp-agent serve` is running"));
    assert!(daemon.stop().success());
    assert!(!daemon.socket.exists(), "the socket is removed on shutdown");
    assert_eq!(hello(&env.state)["daemon"], false);
}

#[test]
fn concurrent_requests_serialize_per_service_only() {
    let env = Env::new();
    let slow = env.svc("slow");
    let other = env.svc("other");
    env.define(&slow, &service(&slow, &[ticker(&slow, "web", None)]));
    env.ok(&["deploy", &slow]);
    // Replacements must stay up 8 s before a deploy finishes.
    let _daemon = env.start_daemon(&["--settle-ms", "8000"]);
    env.define(&slow, &service(&slow, &[ticker(&slow, "web", Some("always"))]));
    let mut replacing = Command::new(MCP)
        .args(["--config", env.config.to_str().unwrap(), "-q", "deploy", &slow])
        .env("HOME", &env.home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let old = format!("{slow}-web.mcp-old");
    assert!(wait_for(DEADLINE, || env.container_id(&old)).is_some(), "the replacement started");
    // Another service deploys, and status answers, while the first deploy still runs.
    env.define(&other, &service(&other, &[ticker(&other, "web", None)]));
    env.ok(&["deploy", &other]);
    env.ok(&["status"]);
    assert!(replacing.try_wait().unwrap().is_none(), "the slow deploy was still settling");

    // A second deploy of the same service waits for the first, then finds nothing to do.
    let again = env.ok(&["deploy", &slow, "--json"]).json();
    assert!(replacing.wait().unwrap().success());
    assert_eq!(again["result"]["changes"][0]["change"], "unchanged", "{again}");
    assert!(env.container_id(&old).is_none());
}

#[test]
fn logs_tail_and_follow_through_the_agent() {
    let env = Env::new();
    let svc = env.svc("logs");
    env.define(&svc, &service(&svc, &[ticker(&svc, "a", None), ticker(&svc, "b", None)]));
    env.ok(&["deploy", &svc]);
    let want = format!("{svc} tick 3");
    assert!(wait_for(DEADLINE, || env.ok(&["logs", &format!("{svc}/a")]).stdout.contains(&want).then_some(())).is_some());

    // Standalone agent: one component, last 2 lines, no prefix.
    let two = env.ok(&["logs", &format!("{svc}/a"), "--tail", "2"]).stdout;
    let lines: Vec<&str> = two.lines().collect();
    assert_eq!(lines.len(), 2, "{two}");
    assert!(lines.iter().all(|l| l.starts_with(&format!("{svc} tick "))), "{two}");
    // Whole service: prefixed by component; JSON lines for scripts.
    let all = env.ok(&["logs", &svc, "--tail", "1"]).stdout;
    assert!(all.contains("a | ") && all.contains("b | "), "{all}");
    let json = env.ok(&["logs", &svc, "--tail", "1", "--json"]).stdout;
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!((first["component"].as_str(), first["stream"].as_str()), (Some("a"), Some("stdout")));
    assert_eq!(env.mcp(&["logs", &format!("{svc}/nope")]).code, 4);

    // Through the daemon, followed: new lines arrive; when the client goes, so does podman logs.
    let _daemon = env.start_daemon(&[]);
    let mut follow = Command::new(MCP)
        .args(["--config", env.config.to_str().unwrap(), "logs", &format!("{svc}/b"), "-f", "--tail", "1"])
        .env("HOME", &env.home)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        seen.push(line.trim().to_string());
    }
    let n = |l: &str| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
    assert!(seen.windows(2).all(|w| n(&w[1]) == n(&w[0]) + 1), "consecutive new lines: {seen:?}");
    let id = env.container_id(&format!("{svc}-b")).unwrap();
    assert!(process_running(&format!("logs --tail 1 --follow {id}")));
    follow.kill().unwrap();
    follow.wait().unwrap();
    let gone = wait_for(DEADLINE, || (!process_running(&format!("logs --tail 1 --follow {id}"))).then_some(()));
    assert!(gone.is_some(), "podman logs -f outlived its client");
}

#[test]
fn events_are_pruned_to_the_configured_bound() {
    let env = Env::new();
    let svc = env.svc("prune");
    env.define(&svc, &service(&svc, &[ticker(&svc, "web", None)]));
    env.ok(&["deploy", &svc]);
    for verb in ["stop", "start", "stop", "start", "restart", "stop", "start"] {
        env.ok(&[verb, &svc]);
    }
    assert!(env.events(&svc).len() >= 8);
    let conf = env.dir.path().join("agent.toml");
    std::fs::write(&conf, "[events]\nmax_count = 5\n").unwrap();
    let db = rusqlite::Connection::open_with_flags(env.state.join("registry.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let first: i64 = db.query_row("SELECT min(id) FROM events WHERE service = ?1", [&svc], |r| r.get(0)).unwrap();
    let _daemon = env.start_daemon(&["--config", conf.to_str().unwrap()]);
    // The whole registry is bounded (other tests' containers are orphans here and add events
    // of their own): at most 5 rows, shared among services, this service's oldest gone.
    let pruned = wait_for(DEADLINE, || {
        let n: i64 = db.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        let oldest_kept: i64 = db.query_row("SELECT coalesce(min(id), 0) FROM events WHERE id = ?1", [first], |r| r.get(0)).unwrap();
        (n <= 5 && oldest_kept == 0).then_some(n)
    });
    assert!(pruned.is_some(), "{:?}", env.events(&svc));
}
