//! Health checks on real podman (#14.2): a deploy waits for a fresh instance to become healthy
//! and rolls back when it does not; the daemon probes running components, records when one
//! turns unhealthy and restarts it by its restart policy. Also #13's stay-up check for a fresh
//! component.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// The test image's httpd on `port`, with `health` (TOML lines) as its health check and
/// `extra` lines (e.g. an env that makes a new spec).
fn checked(svc: &str, port: u16, health: &str, extra: &str) -> String {
    format!("{}\n[components.health]\n{health}\n", http_service(svc, port, extra))
}

fn status_component(env: &Env, svc: &str) -> serde_json::Value {
    env.ok(&["status", svc, "--json"]).json()["nodes"][0]["result"]["services"][0]["components"][0].clone()
}

#[test]
fn a_replace_waits_for_healthy_and_an_unhealthy_one_is_rolled_back() {
    let env = Env::new();
    let svc = env.svc("gate");
    let port = free_port();
    // Failing checks give up after 3 × 200 ms; passing ones have slack for a slow machine (a
    // start period only delays giving up, never a success).
    let fast = "interval = \"200ms\"\ntimeout = \"1s\"\nretries = 3";
    let slack = "interval = \"200ms\"\ntimeout = \"5s\"\nretries = 3\nstart_period = \"30s\"";
    let http = |path: &str, timing: &str| format!("http = \"http://127.0.0.1:{port}{path}\"\n{timing}");
    env.define(&svc, &checked(&svc, port, &http("/index.html", slack), ""));
    let first = env.ok(&["deploy", &svc]);
    assert!(first.stderr.contains("is healthy after"), "the first deploy waited for healthy: {}", first.stderr);
    let name = format!("{svc}-web");
    let id = env.container_id(&name).unwrap();

    // Serves, but not its health endpoint (/healthz is 404 in the test image); then a command
    // probe that fails inside the container. Each is rolled back and the old container keeps
    // serving.
    let bad = [
        (http("/healthz", fast), "GET /healthz answered HTTP 404"),
        ("cmd = [\"cat\", \"/www/missing\"]\ntimeout = \"5s\"\ninterval = \"200ms\"\nretries = 3".to_string(), "cat exited with status 1"),
    ];
    for (i, (health, why)) in bad.iter().enumerate() {
        env.define(&svc, &checked(&svc, port, health, &format!("env = {{ VERSION = \"bad{i}\" }}")));
        let r = env.mcp(&["deploy", &svc]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("did not become healthy within 600ms"), "{}", r.stderr);
        assert!(r.stderr.contains(why), "the last probe's reason ({why}): {}", r.stderr);
        assert!(r.stderr.contains("the previous version was restored"), "{}", r.stderr);
        assert_eq!(env.container_id(&name).as_deref(), Some(id.as_str()), "the old container is back");
        assert_eq!(http_get(port, DEADLINE).as_deref(), Some("hello from the test image\n"));
    }

    // Healthy replacements: a command probe, a TCP probe, an HTTP probe.
    let good = [format!("cmd = [\"cat\", \"/www/index.html\"]\n{slack}"), format!("tcp = \"127.0.0.1:{port}\"\n{slack}"), http("/", slack)];
    for (i, health) in good.iter().enumerate() {
        env.define(&svc, &checked(&svc, port, health, &format!("env = {{ VERSION = \"good{i}\" }}")));
        let r = env.ok(&["deploy", &svc]);
        assert!(r.stderr.contains("is healthy after"), "{}", r.stderr);
        assert_ne!(env.container_id(&name).as_deref(), Some(id.as_str()), "replaced");
        assert_eq!(http_get(port, DEADLINE).as_deref(), Some("hello from the test image\n"));
    }

    // Only the health check changed: nothing is replaced.
    let current = env.container_id(&name).unwrap();
    env.define(&svc, &checked(&svc, port, &http("/index.html", slack), "env = { VERSION = \"good2\" }"));
    let plan = env.mcp(&["plan", &svc]);
    assert_eq!(plan.code, 5, "a pending change: {}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("update") && plan.stdout.contains("health:") && plan.stdout.contains("nothing is restarted"), "{}", plan.stdout);
    env.ok(&["deploy", &svc]);
    assert_eq!(env.mcp(&["plan", &svc]).code, 0);
    assert_eq!(env.container_id(&name).unwrap(), current);
    assert!(env.ok(&["service", "show", &svc]).stdout.contains(&format!("127.0.0.1:{port}/index.html\"")));
    // A probe elsewhere than the component's own published port is refused before anything runs.
    env.define(&svc, &checked(&svc, port, &format!("tcp = \"127.0.0.1:22\"\n{slack}"), "env = { VERSION = \"elsewhere\" }"));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("health.tcp") && r.stderr.contains("not a port this component publishes"), "{}", r.stderr);
    assert_eq!(env.container_id(&name).unwrap(), current);
}

#[test]
fn an_https_check_trusts_the_ca_it_names_and_nothing_else() {
    let env = Env::new();
    let svc = env.svc("tls");
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = nanos::test_ca(&dir.path().join("tls"));
    let tls_port = free_port();
    let _tls = TlsServer::start(tls_port, &cert, &key);
    // On the host's network a component's checks may probe any port of the node's loopback.
    let def = |version: &str, ca: Option<&std::path::Path>| {
        // The trusting one has slack for a slow machine; the other fails after 3 × 200 ms.
        let ca = ca.map(|c| format!("ca = \"{}\"\nstart_period = \"30s\"\n", c.display())).unwrap_or_default();
        format!(
            "name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"app\"\nimage = \"{IMAGE}\"\nnetwork = \"host\"\n\
             cmd = [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\nenv = {{ VERSION = \"{version}\" }}\n\
             [components.health]\nhttp = \"https://127.0.0.1:{tls_port}/\"\n{ca}interval = \"200ms\"\nretries = 3\n"
        )
    };
    env.define(&svc, &def("1", Some(&ca)));
    assert!(env.ok(&["deploy", &svc]).stderr.contains("is healthy after"));
    let id = env.container_id(&format!("{svc}-app")).unwrap();
    env.define(&svc, &def("2", None));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("UnknownIssuer") && r.stderr.contains("the previous version was restored"), "{}", r.stderr);
    assert_eq!(env.container_id(&format!("{svc}-app")).as_deref(), Some(id.as_str()));
}

#[test]
fn a_fresh_component_that_exits_at_once_fails_its_first_deploy() {
    let env = Env::new();
    let svc = env.svc("fresh");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, "").replace(HTTPD_CMD, r#"["sh", "-c", "echo bye; exit 3"]"#));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("did not stay up") && r.stderr.contains("bye"), "{}", r.stderr);
    assert_eq!(podman_ok(&["ps", "-a", "-q", "--filter", &format!("label=mcp.service={svc}")]), "", "nothing left behind");
    // A fresh component with a health check that never passes fails the same way.
    env.define(&svc, &checked(&svc, port, &format!("http = \"http://127.0.0.1:{port}/healthz\"\ninterval = \"200ms\"\nretries = 2"), ""));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("did not become healthy within 400ms") && r.stderr.contains("HTTP 404"), "{}", r.stderr);
    assert_eq!(podman_ok(&["ps", "-a", "-q", "--filter", &format!("label=mcp.service={svc}")]), "");
}

#[test]
fn the_daemon_records_an_unhealthy_component_and_restarts_it() {
    let env = Env::new();
    let svc = env.svc("sick");
    let port = free_port();
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello\n").unwrap();
    std::fs::write(www.path().join("healthz"), "ok\n").unwrap();
    let health = format!("http = \"http://127.0.0.1:{port}/healthz\"\ninterval = \"300ms\"\nretries = 2\nstart_period = \"30s\"");
    let extra = format!("restart = \"always\"\nvolumes = [\"{}:/www\"]", www.path().display());
    env.define(&svc, &checked(&svc, port, &health, &extra));
    env.ok(&["deploy", &svc]);
    let name = format!("{svc}-web");
    let id = env.container_id(&name).unwrap();
    let _daemon = env.start_daemon(&[]);
    let healthy = wait_for(DEADLINE, || (status_component(&env, &svc)["health"] == "healthy").then_some(()));
    assert!(healthy.is_some(), "status shows healthy: {}", status_component(&env, &svc));
    assert!(env.ok(&["ps"]).stdout.contains("running (healthy)"));

    // The health endpoint fails: recorded once, with the reason, and restarted by the policy.
    std::fs::remove_file(www.path().join("healthz")).unwrap();
    let failed = env.wait_event(&svc, "health.failed", DEADLINE).expect("a health.failed event");
    assert!(failed.contains("HTTP 404") && failed.contains("2 probes in a row"), "{failed}");
    let repair = env.wait_event(&svc, "repair", DEADLINE).expect("a repair after it turned unhealthy");
    assert!(repair.contains("restarted unhealthy") && repair.contains("policy always"), "{repair}");
    assert_eq!(env.container_id(&name).unwrap(), id, "restarted in place, not replaced");

    // Healthy again: recorded once, and status says so.
    std::fs::write(www.path().join("healthz"), "ok\n").unwrap();
    env.wait_event(&svc, "health.ok", DEADLINE).expect("a health.ok event");
    assert!(wait_for(DEADLINE, || (status_component(&env, &svc)["health"] == "healthy").then_some(())).is_some());
    let events = env.events(&svc);
    assert_eq!(events.iter().filter(|(k, _)| k == "health.ok").count(), 1, "{events:?}");
    assert!(events.iter().filter(|(k, _)| k == "health.failed").count() >= 1, "{events:?}");
}

/// `openssl s_server -www` on 127.0.0.1:port with the test certificate; killed on drop.
struct TlsServer(Child);

impl TlsServer {
    fn start(port: u16, cert: &std::path::Path, key: &std::path::Path) -> TlsServer {
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        let up = wait_for(DEADLINE, || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop));
        assert!(up.is_some(), "openssl s_server listens");
        TlsServer(child)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
