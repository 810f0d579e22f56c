//! Remote nodes over SSH: real OpenSSH sshd on 127.0.0.1, real keys, real ssh-agent, the real
//! agent binary behind them, real podman.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::sshd::{agent_command, keygen, public_key, SshAgent, Sshd};
use common::*;

const ANSWER: Duration = Duration::from_secs(20);

/// A node entry for mcp.toml.
struct Node<'a> {
    name: &'a str,
    address: String,
    agent: String,
    extra: String,
}

impl<'a> Node<'a> {
    fn of(name: &'a str, sshd: &Sshd) -> Node<'a> {
        Node { name, address: sshd.address(), agent: agent_command(&sshd.state), extra: String::new() }
    }
}

fn write_nodes(env: &Env, nodes: &[Node]) {
    let mut text = format!("# test fleet\n[services]\ndir = \"{}\"\n", env.services.display());
    for n in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nuser = \"root\"\nagent = \"{}\"\n{}",
            n.name, n.address, n.agent, n.extra
        ));
    }
    env.write_config_text(&text);
}

/// The test's client key as ~/.ssh/id_ed25519 (a default identity); its authorized_keys line.
fn client_key(env: &Env) -> String {
    let key = env.home.join(".ssh/id_ed25519");
    keygen(&key);
    public_key(&key)
}

fn node_dir(env: &Env, name: &str) -> std::path::PathBuf {
    env.dir.path().join(format!("node-{name}"))
}

#[test]
fn two_nodes_login_deploy_and_fan_out() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), std::slice::from_ref(&auth));
    let b = Sshd::start(&node_dir(&env, "b"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a), Node::of("b", &b)]);

    let r = env.ok(&["login", "--yes", "--json"]);
    let reports = r.json();
    for rep in reports.as_array().unwrap() {
        assert_eq!(rep["trust"], "recorded", "{rep}");
        assert_eq!(rep["agent"], env!("CARGO_PKG_VERSION"));
        assert!(rep["host_key"].as_str().unwrap().starts_with("SHA256:"));
    }
    let known = std::fs::read_to_string(env.home.join(".config/mcp/known_hosts")).unwrap();
    assert!(known.contains(&format!("[127.0.0.1]:{} ssh-ed25519 ", a.port)), "{known}");
    let again = env.ok(&["login"]).stdout;
    assert_eq!(again.matches(" known ").count(), 2, "{again}");

    let (sa, sb) = (env.svc("on-a"), env.svc("on-b"));
    let (pa, pb) = (free_port(), free_port());
    env.define(&sa, &http_service(&sa, pa, "").replace("node = \"local\"", "node = \"a\""));
    env.define(&sb, &http_service(&sb, pb, "").replace("node = \"local\"", "node = \"b\""));
    assert!(env.ok(&["deploy", &sa]).stdout.contains("deployed on a"));
    assert!(env.ok(&["deploy", &sb]).stdout.contains("deployed on b"));
    assert!(http_get(pa, ANSWER).is_some());
    assert!(http_get(pb, ANSWER).is_some());
    assert!(env.ok(&["deploy", &sa]).stdout.contains("unchanged on a"));
    // Each node's registry holds its own service.
    assert!(a.state.join("registry.db").exists() && b.state.join("registry.db").exists());

    // Both test nodes share this host's podman, so each sees the other's containers as
    // orphans in status; the registries (list) are separate.
    let status = env.ok(&["status", "--json"]).json();
    let list = env.ok(&["list", "--json"]).json();
    for doc in [&status, &list] {
        assert_eq!(doc["nodes"].as_array().unwrap().len(), 2);
    }
    let names = |doc: &serde_json::Value, i: usize| -> Vec<String> {
        doc["nodes"][i]["result"]["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
    };
    assert!(names(&status, 0).contains(&sa) && names(&status, 1).contains(&sb), "{status}");
    assert_eq!(names(&list, 0), vec![sa.clone()], "{list}");
    assert_eq!(names(&list, 1), vec![sb.clone()], "{list}");
    let list = env.ok(&["node", "list", "--json"]).json();
    assert_eq!(list[0]["reachable"], true);
    assert_eq!(list[0]["services"], 1);
    assert_eq!(list[1]["agent"], env!("CARGO_PKG_VERSION"));

    // Lifecycle commands find the service's node from its definition.
    env.ok(&["stop", &sb]);
    assert_eq!(env.container_state(&format!("{sb}-web")).as_deref(), Some("exited"));
    env.ok(&["start", &sb]);
    assert!(http_get(pb, ANSWER).is_some());
    assert!(env.ok(&["ps"]).stdout.contains(&format!("{sa}-web")));
}

#[test]
fn unknown_host_key_is_refused_until_trusted() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    let svc = env.svc("trust");
    env.define(&svc, &http_service(&svc, free_port(), "").replace("node = \"local\"", "node = \"a\""));

    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let fp = String::from_utf8(
        std::process::Command::new("ssh-keygen").arg("-lf").arg(a.dir.join("host_ed25519.pub")).output().unwrap().stdout,
    )
    .unwrap();
    let fp = fp.split_whitespace().nth(1).unwrap().to_string();
    assert!(r.stderr.contains("is not trusted yet") && r.stderr.contains(&fp) && r.stderr.contains("mcp login a"), "{}", r.stderr);
    assert!(!a.state.join("registry.db").exists(), "nothing ran on the node");

    // No terminal and no --yes: not accepted, nothing recorded.
    let r = env.mcp(&["login", "a"]);
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("not-accepted"), "{}", r.stdout);
    assert!(!env.home.join(".config/mcp/known_hosts").exists());

    env.ok(&["login", "a", "--yes"]);
    env.ok(&["deploy", &svc]);
}

#[test]
fn changed_host_key_is_refused_loudly() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    env.ok(&["login", "--yes"]);
    env.ok(&["list"]);

    let a = a.change_host_key();
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("HAS CHANGED") && r.stderr.contains("line 1 of") && r.stderr.contains("known_hosts"), "{}", r.stderr);
    // login refuses too, and does not record the new key.
    let before = std::fs::read_to_string(env.home.join(".config/mcp/known_hosts")).unwrap();
    let r = env.mcp(&["login", "--yes"]);
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("CHANGED"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(env.home.join(".config/mcp/known_hosts")).unwrap(), before);
    drop(a);
}

/// #16.3: a node with several addresses (its Tailscale one down, say) is reached at the next
/// one that answers, within the connect timeout, and shows which; the node's host key must be
/// the same whichever address answers: another sshd (another key) at an address with no record
/// of its own is refused, never passed over for the next address.
#[test]
fn a_node_is_reached_at_its_next_address_and_must_show_the_same_key() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), std::slice::from_ref(&auth));
    let impostor = Sshd::start(&node_dir(&env, "impostor"), &[auth]);
    // Nothing listens there: connection refused.
    let dead = format!("127.0.0.1:{}", free_port());
    let node = |addresses: &[String]| {
        let list: Vec<String> = addresses.iter().map(|a| format!("{a:?}")).collect();
        Node { name: "a", address: dead.clone(), agent: agent_command(&a.state), extra: format!("addresses = [{}]\n", list.join(", ")) }
    };
    write_nodes(&env, &[node(&[a.address()])]);
    let r = env.ok(&["login", "--yes", "--json"]).json();
    assert_eq!((r[0]["trust"].as_str(), r[0]["address"].as_str()), (Some("recorded"), Some(a.address().as_str())), "{r}");
    let known = std::fs::read_to_string(env.home.join(".config/mcp/known_hosts")).unwrap();
    assert_eq!(known.lines().count(), 1, "recorded for the address that answered: {known}");
    let r = env.mcp(&["-v", "node", "list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let list = r.json();
    assert_eq!(list[0]["answered"], a.address().as_str(), "{list}");
    assert_eq!(list[0]["address"], format!("{dead},{}", a.address()).as_str());
    assert!(r.stderr.contains(&format!("address={dead}")) && r.stderr.contains("trying the next"), "{}", r.stderr);
    assert!(env.ok(&["node", "list"]).stdout.contains(&format!("{dead},{}*", a.address())));

    // The impostor (another host key) before the real address: refused as a changed key.
    write_nodes(&env, &[node(&[impostor.address(), a.address()])]);
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("HAS CHANGED") && r.stderr.contains(&impostor.address()), "{}", r.stderr);
    let r = env.mcp(&["login", "--yes"]);
    assert_ne!(r.code, 0);
    assert_eq!(std::fs::read_to_string(env.home.join(".config/mcp/known_hosts")).unwrap(), known, "nothing recorded");

    // No address answers: each is named with its cause.
    let dead2 = format!("127.0.0.1:{}", free_port());
    write_nodes(&env, &[node(std::slice::from_ref(&dead2))]);
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("at any of its addresses") && r.stderr.contains(&dead) && r.stderr.contains(&dead2), "{}", r.stderr);
}

/// A known host that now offers a key of another type is a changed host (as OpenSSH says):
/// refused, never recorded by `login --yes`. A host that has a key of the recorded type among
/// others is asked for that type first, so it connects.
#[test]
fn a_host_key_of_another_type_is_a_changed_key() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    env.ok(&["login", "--yes"]);
    let known = env.home.join(".config/mcp/known_hosts");
    let before = std::fs::read_to_string(&known).unwrap();
    assert!(before.contains("ssh-ed25519"), "{before}");

    let a = a.with_host_key_types(&["ecdsa"]);
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("HAS CHANGED") && r.stderr.contains("line 1 of"), "{}", r.stderr);
    let r = env.mcp(&["login", "--yes"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("CHANGED"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(&known).unwrap(), before, "not recorded");

    // Both types offered, ed25519 recorded: the recorded type is negotiated, whatever the
    // server or russh would prefer.
    let a = a.with_host_key_types(&["ecdsa", "ed25519"]);
    env.ok(&["list"]);
    // And the other way round: ecdsa recorded, ed25519 (russh's first choice) also offered.
    std::fs::remove_file(&known).unwrap();
    let a = a.with_host_key_types(&["ecdsa"]);
    env.ok(&["login", "--yes"]);
    assert!(std::fs::read_to_string(&known).unwrap().contains("ecdsa-sha2-nistp256"));
    let a = a.with_host_key_types(&["ed25519", "ecdsa"]);
    env.ok(&["list"]);
    drop(a);
}

/// An identity file others can read is refused, as OpenSSH refuses it, and the error says
/// how to fix it; at 0600 the same file works.
#[test]
fn identity_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    env.ok(&["login", "--yes"]);
    let key = env.home.join(".ssh/id_ed25519");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("mode 0644 lets others read the private key") && r.stderr.contains("chmod 600"), "{}", r.stderr);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["list"]);
    drop(a);
}

#[test]
fn hashed_openssh_known_hosts_entries_are_trusted() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    // What `ssh` itself records with HashKnownHosts: hashed [127.0.0.1]:port entries.
    let out = std::process::Command::new("ssh-keyscan").args(["-H", "-t", "ed25519", "-p", &a.port.to_string(), "127.0.0.1"]).output().unwrap();
    let lines = String::from_utf8(out.stdout).unwrap();
    assert!(lines.starts_with("|1|"), "{lines}");
    std::fs::write(env.home.join(".ssh/known_hosts"), lines).unwrap();
    let r = env.ok(&["node", "list", "--json"]).json();
    assert_eq!(r[0]["reachable"], true, "{r}");
}

#[test]
fn ssh_agent_auth_and_refused_auth() {
    let env = Env::new();
    // The key lives only in a real ssh-agent: no identity file anywhere.
    let key = env.dir.path().join("agent-key");
    keygen(&key);
    let a = Sshd::start(&node_dir(&env, "a"), &[public_key(&key)]);
    write_nodes(&env, &[Node::of("a", &a)]);

    let r = env.mcp(&["login", "--yes", "--json"]);
    assert_ne!(r.code, 0);
    let rep = &r.json()[0];
    assert!(rep["error"].as_str().unwrap().contains("refused authentication as \"root\""), "{rep}");

    let agent = SshAgent::start(env.dir.path(), &key);
    env.extra_env.borrow_mut().push(("SSH_AUTH_SOCK".into(), agent.socket.display().to_string()));
    let r = env.ok(&["login", "--yes", "--json"]).json();
    assert_eq!(r[0]["agent"], env!("CARGO_PKG_VERSION"));

    // An explicit identity file that is not authorized, without the agent: refused, and says what was tried.
    env.extra_env.borrow_mut().clear();
    let other = env.dir.path().join("other-key");
    keygen(&other);
    let mut n = Node::of("a", &a);
    n.extra = format!("identity = \"{}\"\n", other.display());
    write_nodes(&env, &[n]);
    let r = env.mcp(&["list"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("refused authentication") && r.stderr.contains("other-key"), "{}", r.stderr);
}

#[test]
fn forced_command_in_authorized_keys_works() {
    let env = Env::new();
    let auth = client_key(&env);
    let dir = node_dir(&env, "a");
    let state = dir.join("agent-state");
    let forced = format!("command=\"{}\",restrict {auth}", agent_command(&state));
    let a = Sshd::start(&dir, &[forced]);
    // The node's agent command is irrelevant: sshd runs the forced one.
    let mut n = Node::of("a", &a);
    n.agent = "this-is-ignored".into();
    write_nodes(&env, &[n]);
    env.ok(&["login", "--yes"]);
    let svc = env.svc("forced");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, "").replace("node = \"local\"", "node = \"a\""));
    env.ok(&["deploy", &svc]);
    assert!(http_get(port, ANSWER).is_some());
    assert!(state.join("registry.db").exists());
}

#[test]
fn agent_missing_on_the_node_is_a_clear_error() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    let mut n = Node::of("a", &a);
    n.agent = "/nonexistent/bin/mcp-agent rpc".into();
    write_nodes(&env, &[n]);
    let r = env.mcp(&["login", "--yes"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("was not found on the node") && r.stdout.contains("install mcp-agent"), "{}", r.stdout);
}

#[test]
fn one_node_down_does_not_fail_the_others() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    // c: nothing listens. d: accepts TCP and never speaks (a hung host).
    let closed = free_port();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    write_nodes(
        &env,
        &[
            Node::of("a", &a),
            Node { name: "c", address: format!("127.0.0.1:{closed}"), agent: "x".into(), extra: String::new() },
            Node { name: "d", address: format!("127.0.0.1:{silent_port}"), agent: "x".into(), extra: String::new() },
        ],
    );
    env.ok(&["login", "a", "--yes"]);
    let svc = env.svc("survivor");
    env.define(&svc, &http_service(&svc, free_port(), "").replace("node = \"local\"", "node = \"a\""));
    env.ok(&["deploy", &svc]);

    let r = env.mcp(&["--connect-timeout", "2", "status", "--json"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let st = r.json();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["result"]["services"][0]["name"], svc.as_str());
    assert!(nodes[1]["error"].as_str().unwrap().contains("cannot reach node c"), "{st}");
    assert!(nodes[2]["error"].as_str().unwrap().contains("timed out after 2s"), "{st}");
    let table = env.mcp(&["--connect-timeout", "2", "node", "list"]).stdout;
    assert!(table.lines().any(|l| l.starts_with("a ") && l.contains("yes")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("c ") && l.contains("no")), "{table}");
    drop(silent);
}

#[test]
fn node_add_and_remove_keep_comments_and_order() {
    let env = Env::new();
    env.write_config_text("# my fleet\n[services]\ndir = \"svc\" # where services live\n\n# the first node\n[[nodes]]\nname = \"local\"\naddress = \"local\"\n");
    env.ok(&["node", "add", "rift", "10.0.0.5:9444", "--user", "deploy"]);
    env.ok(&["node", "add", "edge", "edge.example"]);
    let r = env.mcp(&["node", "add", "rift", "h"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("already exists"));
    let r = env.mcp(&["node", "add", "bad", "h:notaport"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    env.ok(&["node", "remove", "rift"]);
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.starts_with("# my fleet\n[services]\ndir = \"svc\" # where services live\n"), "{text}");
    assert!(text.contains("# the first node\n[[nodes]]\nname = \"local\""), "{text}");
    assert!(!text.contains("rift"), "{text}");
    let local = text.find("name = \"local\"").unwrap();
    let edge = text.find("name = \"edge\"").unwrap();
    assert!(local < edge);
    let r = env.mcp(&["node", "remove", "nope"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
}

#[test]
fn sync_prune_and_service_show_export_edit_over_ssh() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), std::slice::from_ref(&auth));
    let b = Sshd::start(&node_dir(&env, "b"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a), Node::of("b", &b)]);
    env.ok(&["login", "--yes"]);
    let (s1, s2, s3) = (env.svc("one"), env.svc("two"), env.svc("three"));
    let on = |svc: &str, node: &str| http_service(svc, free_port(), "").replace("node = \"local\"", &format!("node = \"{node}\""));
    env.define(&s1, &on(&s1, "a"));
    env.define(&s2, &on(&s2, "b"));

    let lines = env.ok(&["sync", "--json"]).json();
    let results: Vec<(String, String, String)> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["service"].as_str().unwrap().into(), l["node"].as_str().unwrap().into(), l["result"].as_str().unwrap().into()))
        .collect();
    assert_eq!(results, vec![(s1.clone(), "a".into(), "1 created".into()), (s2.clone(), "b".into(), "1 created".into())]);
    let again = env.ok(&["sync"]).stdout;
    assert_eq!(again.matches("unchanged").count(), 2, "{again}");

    // s3 is deployed to a from a file outside the services dir: sync keeps it, --prune removes it.
    let outside = env.dir.path().join(format!("{s3}.toml"));
    std::fs::write(&outside, on(&s3, "a")).unwrap();
    env.ok(&["deploy", outside.to_str().unwrap()]);
    env.ok(&["sync"]);
    assert!(env.container_id(&format!("{s3}-web")).is_some(), "never removed without --prune");
    let pruned = env.ok(&["sync", "--prune", "--json"]).json();
    assert!(pruned.as_array().unwrap().iter().any(|l| l["service"] == s3.as_str() && l["result"] == "pruned"), "{pruned}");
    assert_eq!(env.container_id(&format!("{s3}-web")), None);
    let list = env.ok(&["list", "--json"]).json();
    assert!(!list.to_string().contains(&s3));

    // show / export: the agent's spec, as JSON and as a service file that loads back the same.
    let shown = env.ok(&["service", "show", &s1, "--json"]).json();
    assert_eq!(shown["name"], s1.as_str());
    assert_eq!(shown["node"], "a");
    assert_eq!(shown["components"][0]["image"], IMAGE);
    assert!(env.ok(&["service", "show", &s1]).stdout.contains(&format!("name = \"{s1}\"")));
    let exported = env.dir.path().join("exported.toml");
    env.ok(&["service", "export", &s1, exported.to_str().unwrap()]);
    let original = std::fs::read_to_string(env.services.join(format!("{s1}.toml"))).unwrap();
    let p1 = mcp::plan::parse_service_toml(&original, std::path::Path::new("a")).unwrap();
    let p2 = mcp::plan::parse_service_toml(&std::fs::read_to_string(&exported).unwrap(), std::path::Path::new("b")).unwrap();
    assert_eq!(p1, p2);

    // edit: an invalid edit is refused and the file kept; a valid one is saved and deployed.
    let editor = env.dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i \"$SED_SCRIPT\" \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = env.services.join(format!("{s1}.toml"));
    env.extra_env.borrow_mut().push(("EDITOR".into(), editor.display().to_string()));
    env.extra_env.borrow_mut().push(("SED_SCRIPT".into(), "s/^ports = .*/ports = [\"nope\"]/".into()));
    let r = env.mcp(&["service", "edit", &s1]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("the edit was refused") && r.stderr.contains("ports[0]"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    let rejected = std::fs::metadata(file.with_extension("toml.rejected")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&rejected.permissions()) & 0o777, 0o600, "the rejected copy may hold secrets");
    env.extra_env.borrow_mut().pop();
    env.extra_env.borrow_mut().push(("SED_SCRIPT".into(), "$ a env = { EDITED = \"yes\" }".into()));
    let r = env.ok(&["service", "edit", &s1]);
    assert!(r.stdout.contains("1 replaced"), "{}", r.stdout);
    assert!(std::fs::read_to_string(&file).unwrap().contains("EDITED"));

    // An invalid file in the services dir: sync refuses before touching any node.
    env.define("broken", "name = \"broken\"\n[[components]]\nname = \"x\"\n");
    let r = env.mcp(&["sync"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nothing was synced") && r.stderr.contains("broken.toml"), "{}", r.stderr);
}

#[test]
fn push_and_pull_are_confined_atomic_and_stream_large_files() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    env.ok(&["login", "--yes"]);
    let svc = env.svc("files");
    let srv = env.dir.path().join("srv");
    let (data, certs) = (srv.join(&svc), srv.join(format!("{svc}-certs")));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    let extra = format!("volumes = [\"{}:/data\", \"{}:/certs:ro\"]", data.display(), certs.display());
    env.define(&svc, &http_service(&svc, free_port(), &extra).replace("node = \"local\"", "node = \"a\""));
    env.ok(&["deploy", &svc]);

    let local = env.dir.path().join("app.toml");
    std::fs::write(&local, "key = 1\n").unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = env.ok(&["push", local.to_str().unwrap(), &svc]).stdout;
    assert!(out.contains("mode 0640"), "{out}");
    assert_eq!(std::fs::read_to_string(data.join("app.toml")).unwrap(), "key = 1\n");
    assert_eq!(std::fs::metadata(data.join("app.toml")).unwrap().permissions().mode() & 0o777, 0o640);
    // The container sees it through its volume.
    assert_eq!(podman_ok(&["exec", &format!("{svc}-web"), "cat", "/data/app.toml"]), "key = 1");

    env.ok(&["push", local.to_str().unwrap(), &svc, "sub/dir/x.conf", "--mode", "0600"]);
    assert_eq!(std::fs::metadata(data.join("sub/dir/x.conf")).unwrap().permissions().mode() & 0o777, 0o600);
    let abs = certs.join("cert.pem");
    env.ok(&["push", local.to_str().unwrap(), &svc, abs.to_str().unwrap()]);
    assert!(abs.exists());

    // Escapes are refused and write nothing.
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), data.join("filelink")).unwrap();
    std::fs::write(outside.join("secret"), "do not read").unwrap();
    let escape_to = outside.join("escaped");
    for target in ["../escaped", "sub/../../escaped", escape_to.to_str().unwrap(), "link/escaped", "filelink"] {
        let r = env.mcp(&["push", local.to_str().unwrap(), &svc, target]);
        assert_eq!(r.code, 2, "push to {target} must be refused: {}", r.stderr);
    }
    assert!(!escape_to.exists() && !env.dir.path().join("escaped").exists());
    assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "do not read");
    for source in ["../outside/secret", "filelink", "link/secret", "/etc/passwd"] {
        let r = env.mcp(&["pull", &svc, source, env.dir.path().join("stolen").to_str().unwrap()]);
        assert_ne!(r.code, 0, "pull of {source} must be refused");
    }
    assert!(!env.dir.path().join("stolen").exists());

    // Pull back with the node's mode.
    let back = env.dir.path().join("back.conf");
    env.ok(&["pull", &svc, "sub/dir/x.conf", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "key = 1\n");
    assert_eq!(std::fs::metadata(&back).unwrap().permissions().mode() & 0o777, 0o600);

    // 50 MiB round trip, byte for byte.
    let big = env.dir.path().join("big.bin");
    let mut bytes = vec![0u8; 50 * 1024 * 1024 + 7];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&big, &bytes).unwrap();
    env.ok(&["push", big.to_str().unwrap(), &svc, "blobs/big.bin"]);
    let big_back = env.dir.path().join("big.back");
    env.ok(&["pull", &svc, "blobs/big.bin", big_back.to_str().unwrap()]);
    let got = std::fs::read(&big_back).unwrap();
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "50 MiB file differs after the round trip");
    let leftovers: Vec<_> = std::fs::read_dir(data.join("blobs")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn adopt_takes_over_running_containers_without_restarting_them() {
    let env = Env::new();
    let auth = client_key(&env);
    let a = Sshd::start(&node_dir(&env, "a"), &[auth]);
    write_nodes(&env, &[Node::of("a", &a)]);
    env.ok(&["login", "--yes"]);
    let svc = env.svc("legacy");
    let port = free_port();
    let web = podman_ok(&["run", "-d", "--name", &format!("{svc}-web"), "-p", &format!("127.0.0.1:{port}:8080"), "-e", "MODE=old", IMAGE, "sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]);
    let side = podman_ok(&["run", "-d", "--name", &format!("{svc}-side"), "--stop-timeout", "1", IMAGE, "sleep", "300"]);
    let started = |id: &str| podman_ok(&["inspect", "--format", "{{.State.StartedAt}}", id]);
    let (web_t, side_t) = (started(&web), started(&side));

    let r = env.ok(&["adopt", &svc, "--node", "a", "--json"]).json();
    let changes = r["result"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{r}");
    assert!(changes.iter().all(|c| c["change"] == "adopted"));
    assert_eq!((started(&web), started(&side)), (web_t, side_t), "adoption must not restart anything");
    let st = env.ok(&["status", &svc, "--node", "a", "--json"]).json();
    for c in st["nodes"][0]["result"]["services"][0]["components"].as_array().unwrap() {
        assert!(c["drift"].is_null(), "adopted containers are not drift: {st}");
    }
    let shown = env.ok(&["service", "show", &svc, "--node", "a", "--json"]).json();
    let web_spec = shown["components"].as_array().unwrap().iter().find(|c| c["name"] == "web").unwrap().clone();
    assert_eq!(web_spec["ports"][0], format!("127.0.0.1:{port}:8080"));
    assert_eq!(web_spec["env"]["MODE"], "old");
    assert_eq!(web_spec["image"], IMAGE);
    let side_spec = shown["components"].as_array().unwrap().iter().find(|c| c["name"] == "side").unwrap().clone();
    assert_eq!(side_spec["stop_timeout"], 1);
    assert_eq!(side_spec["cmd"], serde_json::json!(["sleep", "300"]));

    // Lifecycle works on adopted components.
    env.ok(&["stop", &format!("{svc}/side"), "--node", "a"]);
    assert_eq!(env.container_state(&format!("{svc}-side")).as_deref(), Some("exited"));
    env.ok(&["start", &format!("{svc}/side"), "--node", "a"]);
    assert_eq!(env.container_id(&format!("{svc}-side")).as_deref(), Some(side.as_str()), "started, not recreated");

    // Exported, it is a valid definition; deploying it replaces the containers with labelled ones.
    let file = env.services.join(format!("{svc}.toml"));
    env.ok(&["service", "export", &svc, file.to_str().unwrap(), "--node", "a"]);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("node = \"a\"\n{text}")).unwrap();
    let r = env.ok(&["deploy", &svc, "--json"]).json();
    assert!(r["result"]["changes"].as_array().unwrap().iter().all(|c| c["change"] == "replaced"), "{r}");
    assert!(http_get(port, ANSWER).is_some());

    let r = env.mcp(&["adopt", &svc, "--node", "a"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("already managed"), "{}", r.stderr);
    let r = env.mcp(&["adopt", "nothing-like-this", "--node", "a"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
}
