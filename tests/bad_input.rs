//! Bad input gets a clear error and changes nothing: every malformed definition below is
//! rejected with the expected message, exit code 2, and zero podman calls (the agent runs
//! podman through a logging wrapper). The agent side is checked the same way with plans sent
//! straight to `mcp-agent rpc`, bypassing the CLI's own validation.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// (what, file body with NAME for the service name, expected fragment of the error)
const CASES: &[(&str, &str, &str)] = &[
    ("not toml", "name = \"NAME\"\n[[components]\n", "cannot parse service definition"),
    ("unknown top-level field", "name = \"NAME\"\nnodes = \"x\"\n[[components]]\nname = \"a\"\nimage = \"i\"\n", "unknown field `nodes`"),
    ("unknown component field", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nport = [\"80\"]\n", "unknown field `port`"),
    ("ports not a list", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nports = \"80:80\"\n", "invalid type"),
    ("bad service name", "name = \"Bad Name\"\n[[components]]\nname = \"a\"\nimage = \"i\"\n", "name: \"Bad Name\" is not a valid name"),
    ("no components", "name = \"NAME\"\n", "components: a service needs at least one"),
    ("duplicate components", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\n[[components]]\nname = \"a\"\nimage = \"i\"\n", "duplicate component name \"a\""),
    ("missing image", "name = \"NAME\"\n[[components]]\nname = \"a\"\n", "components[0].image: missing"),
    ("image like a flag", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"--privileged\"\n", "is not an image reference"),
    ("port not a number", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nports = [\"127.0.0.1:80:http\"]\n", "components[0].ports[0]: \"127.0.0.1:80:http\" is not a port mapping"),
    ("port out of range", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nports = [\"70000:80\"]\n", "is not a port number 1-65535"),
    ("bad port address", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nports = [\"1.2.3:80:80\"]\n", "is not an IP address"),
    ("port published twice", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nports = [\"8080:80\", \"8080:81\"]\n", "published twice"),
    ("relative volume", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nvolumes = [\"data:/data\"]\n", "host path \"data\" is not absolute"),
    ("volume escapes", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nvolumes = [\"/srv/../etc:/etc\"]\n", "contains '..'"),
    ("volume option", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nvolumes = [\"/srv/a:/a:rx\"]\n", "unknown volume option \"rx\""),
    ("restart value", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nrestart = \"sometimes\"\n", "is not a restart policy"),
    ("bad user", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nuser = \"root user\"\n", "is not a user"),
    ("bad env name", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nenv = { \"A-B\" = \"1\" }\n", "is not an environment variable name"),
    ("bad kind", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nkind = \"vm\"\n", "unknown variant `vm`"),
    ("future plan version", "version = 9\nname = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\n", "plan version 9 is not supported"),
    ("bad network", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nnetwork = \"my net\"\n", "is not a network name"),
    ("stop timeout", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nstop_timeout = 99999\n", "expected 0-3600 seconds"),
    // A typo beside a secret: the position is named, the line (and the secret) never shown.
    ("syntax error beside a secret", "name = \"NAME\"\n[[components]]\nname = \"a\"\nimage = \"i\"\nenv = { PASSWORD = \"hunter2-s3cret\" TOKEN = \"x\" }\n", "line 5, column"),
];

#[test]
fn every_malformed_definition_is_refused_before_podman() {
    assert!(CASES.len() >= 15);
    let env = Env::new();
    for (i, (what, body, expected)) in CASES.iter().enumerate() {
        let name = env.svc(&format!("bad{i}"));
        let path = env.define(&name, &body.replace("NAME", &name));
        let r = env.mcp(&["deploy", &name]);
        assert_eq!(r.code, 2, "{what}: exit code\n{}", r.stderr);
        assert!(r.stderr.contains(expected), "{what}: expected {expected:?} in:\n{}", r.stderr);
        assert!(r.stderr.contains(&path.display().to_string()), "{what}: the error names the file:\n{}", r.stderr);
        assert_eq!(env.podman_calls(), Vec::<String>::new(), "{what}: podman was called");
        assert!(!r.stderr.contains("hunter2-s3cret"), "{what}: a secret on screen:\n{}", r.stderr);
    }
    // Nothing was recorded either.
    let list = env.ok(&["list", "--json"]).json();
    assert!(list["nodes"][0]["result"]["services"].as_array().unwrap().is_empty());
}

/// Talk to `mcp-agent rpc` directly: lines in, lines out.
fn rpc(env: &Env, lines: &[String]) -> Vec<serde_json::Value> {
    let mut child = Command::new(AGENT)
        .args(["rpc", "--state-dir", env.state.to_str().unwrap(), "--podman"])
        .arg(env.dir.path().join("podman-logged"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn hello() -> String {
    r#"{"id":1,"method":"hello","params":{"protocol":1,"client":"test"}}"#.to_string()
}

#[test]
fn agent_rejects_invalid_plans_itself() {
    let env = Env::new();
    let plans = [
        // valid JSON, invalid plan: caught by the agent's validation
        r#"{"version":1,"name":"x y","components":[{"name":"a","image":"i","ports":["80:abc"]}]}"#,
        // unknown field: caught by the agent's parser
        r#"{"version":1,"name":"ok","components":[{"name":"a","image":"i","volume":["/a:/b"]}]}"#,
        // a version from the future
        r#"{"version":2,"name":"ok","components":[{"name":"a","image":"i"}]}"#,
    ];
    let mut lines = vec![hello()];
    for (i, p) in plans.iter().enumerate() {
        lines.push(format!(r#"{{"id":{},"method":"deploy","params":{{"plan":{p}}}}}"#, i + 2));
    }
    let out = rpc(&env, &lines);
    assert_eq!(out[0]["result"]["protocol"], 1);
    for (i, resp) in out[1..].iter().enumerate() {
        assert_eq!(resp["id"], (i + 2) as u64);
        assert_eq!(resp["error"]["code"], "invalid_plan", "{resp}");
    }
    assert!(out[1]["error"]["fields"][0]["field"] == "name", "{}", out[1]);
    assert!(out[2]["error"]["message"].as_str().unwrap().contains("unknown field `volume`"));
    assert!(out[3]["error"]["message"].as_str().unwrap().contains("plan version 2 is not supported"));
    assert_eq!(env.podman_calls(), Vec::<String>::new());
}

#[test]
fn protocol_versions_and_handshake_are_enforced() {
    let env = Env::new();
    let out = rpc(
        &env,
        &[
            r#"{"id":1,"method":"list"}"#.to_string(),
            r#"{"id":2,"method":"hello","params":{"protocol":99,"client":"mcp 9.0"}}"#.to_string(),
            "this is not json".to_string(),
            hello(),
            r#"{"id":5,"method":"frobnicate"}"#.to_string(),
            r#"{"id":6,"method":"list"}"#.to_string(),
        ],
    );
    assert_eq!(out[0]["error"]["code"], "bad_request");
    assert!(out[0]["error"]["message"].as_str().unwrap().contains("first request must be hello"));
    assert_eq!(out[1]["error"]["code"], "protocol_mismatch");
    let msg = out[1]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("protocol 99") && msg.contains("speaks 1") && msg.contains("same mcp release"), "{msg}");
    assert_eq!(out[2]["error"]["code"], "bad_request");
    assert_eq!(out[3]["result"]["protocol"], 1);
    assert_eq!(out[4]["error"]["code"], "bad_request");
    assert!(out[5]["result"]["services"].is_array());
}

#[test]
fn bad_config_and_missing_pieces_have_clear_errors() {
    let env = Env::new();
    // A typo in mcp.toml.
    std::fs::write(&env.config, "[[nodes]]\nname = \"local\"\nadress = \"local\"\n").unwrap();
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("invalid config") && r.stderr.contains("adress"), "{}", r.stderr);

    // The agent program is missing: exit 3, says what to do.
    env.write_config("/nonexistent/mcp-agent rpc");
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("cannot find the agent program") && r.stderr.contains("install mcp-agent"), "{}", r.stderr);

    // The agent exits at once (a wrong agent command): the reason reaches the operator.
    env.write_config(&format!("{AGENT} rpc --bogus-flag"));
    let r = env.mcp(&["status"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("agent exited before answering") && r.stderr.contains("--bogus-flag"), "{}", r.stderr);

    // No definition for the name.
    env.write_config(&format!("{AGENT} rpc --state-dir {}", env.state.display()));
    let r = env.mcp(&["deploy", "nothing-here"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no service definition for \"nothing-here\""), "{}", r.stderr);

    // A node the config does not have.
    let svc = env.svc("elsewhere");
    env.define(&svc, &http_service(&svc, 1, "").replace("node = \"local\"", "node = \"rift\""));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("node \"rift\" is not configured"), "{}", r.stderr);
}

/// A node's `[policy]` narrows what a deploy may ask for (the forced-command key's reach):
/// a plan with a volume outside the allowed roots, root as user and the host's network is
/// refused with every field named, exit 2, before podman is asked anything; within the
/// policy it deploys.
#[test]
fn the_node_policy_refuses_plans_that_ask_for_more() {
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    let allowed = env.dir.path().join("srv");
    std::fs::create_dir_all(allowed.join("app")).unwrap();
    std::fs::write(
        env.state.join("agent.toml"),
        format!("[policy]\nvolume_roots = [\"{}\"]\nroot_user = false\nhost_network = false\nunikernels = false\n", allowed.display()),
    )
    .unwrap();
    let svc = env.svc("policy");
    env.define(
        &svc,
        &format!(
            "name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\nuser = \"0:0\"\nnetwork = \"host\"\n\
             volumes = [\"/etc:/host-etc\", \"{}:/data\"]\ncmd = [\"sleep\", \"600\"]\n",
            allowed.join("app").display()
        ),
    );
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in ["refused by this node's policy", "components[0].volumes[0]: /etc is outside the volume roots", "components[0].user", "components[0].network"] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("volumes[1]"), "the allowed volume is not named: {}", r.stderr);
    assert!(env.podman_mutations().is_empty(), "podman was not asked to change anything: {:?}", env.podman_mutations());
    // Within the policy: deployed.
    env.define(
        &svc,
        &format!(
            "name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\nuser = \"1000\"\n\
             volumes = [\"{}:/data\"]\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n",
            allowed.join("app").display()
        ),
    );
    env.ok(&["deploy", &svc]);
    assert!(env.container_id(&format!("{svc}-web")).is_some());
}

/// The ways around a narrow policy an attack probe of it found, each closed: a symlink a
/// container made inside an allowed volume root (to /), a container made by hand with a host
/// mount adopted, a component registered before the policy was narrowed made again by `start`,
/// a registry login when `registry_admin = false`.
#[test]
fn the_node_policy_is_not_bypassed_by_links_adoption_or_older_registrations() {
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    let allowed = env.dir.path().join("srv");
    std::fs::create_dir_all(allowed.join("app")).unwrap();
    std::os::unix::fs::symlink("/", allowed.join("app/r")).unwrap();
    let narrow = format!("[policy]\nvolume_roots = [\"{}\"]\nroot_user = false\nregistry_admin = false\n", allowed.display());
    let svc = env.svc("bypass");
    let service = |user: &str, volume: &str| {
        format!("name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\n{user}volumes = [\"{volume}\"]\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n")
    };
    // Registered while the node allowed anything (user 0).
    env.define(&svc, &service("user = \"0\"\n", &format!("{}:/data", allowed.join("app").display())));
    env.ok(&["deploy", &svc]);
    std::fs::write(env.state.join("agent.toml"), &narrow).unwrap();

    // The link: refused, named.
    env.define(&svc, &service("user = \"1000\"\n", &format!("{}:/host", allowed.join("app/r").display())));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("goes through a symbolic link"), "{}", r.stderr);

    // The old registration is not made again: its container gone, `start` refuses.
    env.ok(&["stop", &svc]);
    let id = env.container_id(&format!("{svc}-web")).unwrap();
    podman_ok(&["rm", "-f", &id]);
    let r = env.mcp(&["start", &svc]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("refused by this node's policy") && r.stderr.contains("numeric uid"), "{}", r.stderr);
    assert!(env.container_id(&format!("{svc}-web")).is_none());

    // A container made by hand with a host mount, then adopt: refused.
    let other = env.svc("handmade");
    podman_ok(&["run", "-d", "--name", &format!("{other}-web"), "-v", "/etc:/host-etc:ro", IMAGE, "sleep", "600"]);
    let r = env.mcp(&["adopt", &other]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("/etc is outside the volume roots"), "{}", r.stderr);
    let _ = podman(&["rm", "-f", "-t", "0", &format!("{other}-web")]);

    // Registry credentials are not a deploy key's business here.
    let r = env.mcp_stdin(&["registry", "login", "127.0.0.1:5999", "-u", "x", "--password-stdin"], "pw");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("registry_admin = false"), "{}", r.stderr);
}
