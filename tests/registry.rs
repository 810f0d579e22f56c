//! Pulls from a real private registry (docker-registry on 127.0.0.1 with TLS from the test's
//! CA and htpasswd auth): `mcp registry login/logout/list` through the agent, deploys that
//! pull before they change anything, failures that say why and leave the previous version
//! serving, and a password that reaches no argv and no file but the agent's 0600 auth file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::registry::{derived_image, random_bytes, Registry};
use common::sshd::{agent_command, keygen, public_key, Sshd};
use common::*;

const ANSWER: Duration = Duration::from_secs(20);

/// Watches every process's argv for `secret` until dropped; `seen()` says whether it showed.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl ArgvWatch {
    fn new(secret: &str) -> ArgvWatch {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (s, f, secret) = (stop.clone(), seen.clone(), secret.as_bytes().to_vec());
        let thread = std::thread::spawn(move || {
            let mut scans = 0;
            while !s.load(Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
                        if cmdline.windows(secret.len()).any(|w| w == secret.as_slice()) {
                            f.store(true, Ordering::SeqCst);
                        }
                    }
                }
                scans += 1;
            }
            scans
        });
        ArgvWatch { stop, seen, thread: Some(thread) }
    }

    /// Stop watching: (seen, number of full scans of /proc).
    fn finish(mut self) -> (bool, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let scans = self.thread.take().unwrap().join().unwrap();
        (self.seen.load(Ordering::SeqCst), scans)
    }
}

/// Files under `dir` whose bytes contain `secret`.
fn files_holding(dir: &Path, secret: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            files_holding(&p, secret, out);
        } else if meta.is_file() && meta.len() < 64 << 20 {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
}

fn registry_list(env: &Env, node: Option<&str>) -> serde_json::Value {
    let mut args = vec!["registry", "list", "--json"];
    if let Some(n) = node {
        args.extend(["--node", n]);
    }
    env.ok(&args).json()["nodes"][0]["result"]["registries"].clone()
}

/// `mcp registry login <address> --ca-file <ca> -u <user> --password-stdin [extra]`.
fn login_as(env: &Env, address: &str, ca: &Path, user: &str, password: &str, extra: &[&str]) -> Run {
    let mut args = vec!["registry", "login", address, "--ca-file", ca.to_str().unwrap(), "-u", user, "--password-stdin"];
    args.extend(extra);
    env.mcp_stdin(&args, password)
}

/// A login with the registry's CA and credentials that must succeed.
fn login(env: &Env, reg: &Registry, address: &str) {
    let r = login_as(env, address, &reg.ca, &reg.user, &reg.password, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// An SSH node "a" (a real sshd, the agent as the key's forced command), the only node in
/// mcp.toml, its host key trusted: (the sshd, the node agent's state dir).
fn ssh_node(env: &Env) -> (Sshd, std::path::PathBuf) {
    let key = env.home.join(".ssh/id_ed25519");
    keygen(&key);
    let dir = env.dir.path().join("node-a");
    let state = dir.join("agent-state");
    let sshd = Sshd::start(&dir, &[format!("command=\"{}\",restrict {}", agent_command(&state), public_key(&key))]);
    env.write_config_text(&format!(
        "[services]\ndir = \"{}\"\n\n[[nodes]]\nname = \"a\"\naddress = \"{}\"\nuser = \"root\"\nidentity = \"{}\"\n",
        env.services.display(),
        sshd.address(),
        key.display()
    ));
    env.ok(&["login", "--yes"]);
    (sshd, state)
}

fn certs_dir(reg: &Registry) -> std::path::PathBuf {
    Path::new("/etc/containers/certs.d").join(reg.address())
}

#[test]
fn deploys_pull_from_a_private_registry_after_login() {
    let env = Env::new();
    let mut reg = Registry::start(&env.dir.path().join("registry"));
    let watch = ArgvWatch::new(&reg.password);
    let v1 = reg.push(IMAGE, &format!("mcp/{}:v1", env.prefix));
    let svc = env.svc("reg");
    let port = free_port();
    let define = |image: &str| env.define(&svc, &http_service(&svc, port, "stop_timeout = 0").replace(IMAGE, image));
    define(&v1);
    let login = |ca: &Path, password: &str| login_as(&env, &reg.address(), ca, &reg.user, &format!("{password}\n"), &[]);

    // No CA, no credentials: refused before anything changed, with what to do.
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("pulling {v1} from {}", reg.address())), "{}", r.stderr);
    assert!(r.stderr.contains("unknown CA") && r.stderr.contains("mcp registry login") && r.stderr.contains("nothing was changed"), "{}", r.stderr);
    assert!(env.container_id(&format!("{svc}-web")).is_none());

    // A login checks the credentials: a wrong CA or password fails and leaves nothing behind.
    let other_ca = common::nanos::test_ca(&env.dir.path().join("other-ca")).0;
    let r = login(&other_ca, &reg.password);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("unknown CA"), "{}", r.stderr);
    let r = login(&reg.ca, "not-the-password");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("unauthorized"), "{}", r.stderr);
    assert_eq!(registry_list(&env, None), serde_json::json!([]));
    assert!(!certs_dir(&reg).exists(), "a failed login leaves no CA behind");

    let r = login(&reg.ca, &reg.password);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(registry_list(&env, None), serde_json::json!([{ "registry": reg.address(), "ca": true }]));
    let auth = env.state.join("registries/auth.json");
    assert_eq!(std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777, 0o600);

    // Now the deploy pulls (progress says so) and serves.
    let r = env.ok(&["deploy", &svc]);
    assert!(r.stderr.contains(&format!("pulling {v1}")), "{}", r.stderr);
    assert!(http_get(port, ANSWER).is_some());
    let id = env.container_id(&format!("{svc}-web")).unwrap();

    // A tag that does not exist: refused, the previous version serves on.
    define(&v1.replace(":v1", ":nope"));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no such image or tag"), "{}", r.stderr);
    assert_eq!(env.container_id(&format!("{svc}-web")).as_deref(), Some(id.as_str()));
    assert!(http_get(port, ANSWER).is_some());

    // The registry gone: refused, still serving.
    reg.stop();
    define(&v1.replace(":v1", ":v2"));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("unreachable"), "{}", r.stderr);
    assert_eq!(env.container_id(&format!("{svc}-web")).as_deref(), Some(id.as_str()));
    assert!(http_get(port, ANSWER).is_some());
    assert!(env.count_events(&svc, "deploy_failed") >= 2, "{:?}", env.events(&svc));

    let r = env.ok(&["registry", "logout", &reg.address()]);
    assert!(r.stdout.contains("logged out of"), "{}", r.stdout);
    assert_eq!(registry_list(&env, None), serde_json::json!([]));
    assert!(!certs_dir(&reg).exists(), "logout removes the CA login installed");

    // The password: in no process's argv during all of this, in no file of the test's dirs.
    let (seen, scans) = watch.finish();
    assert!(!seen, "the password showed in a process's argv");
    assert!(scans > 10, "the watch ran ({scans} scans)");
    let mut holding = Vec::new();
    files_holding(env.dir.path(), &reg.password, &mut holding);
    assert!(holding.is_empty(), "plaintext password in {holding:?}");
    let _ = podman(&["rmi", &v1]);
}

#[test]
fn registry_login_and_pulls_work_over_ssh() {
    let env = Env::new();
    let reg = Registry::start(&env.dir.path().join("registry"));
    let image = reg.push(IMAGE, &format!("mcp/{}:v1", env.prefix));
    let (_sshd, state) = ssh_node(&env);
    let r = login_as(&env, &reg.address(), &reg.ca, &reg.user, &reg.password, &["--node", "a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&format!("a: logged in to {}", reg.address())), "{}", r.stdout);
    assert_eq!(registry_list(&env, Some("a")), serde_json::json!([{ "registry": reg.address(), "ca": true }]));
    assert!(state.join("registries/auth.json").exists(), "the credentials are the SSH node's agent's");
    let svc = env.svc("sshreg");
    let port = free_port();
    env.define(&svc, &http_service(&svc, port, "stop_timeout = 0").replace(IMAGE, &image).replace("node = \"local\"", "node = \"a\""));
    let r = env.ok(&["deploy", &svc]);
    assert!(r.stderr.contains(&format!("pulling {image}")), "progress crosses SSH: {}", r.stderr);
    assert!(http_get(port, ANSWER).is_some());
    env.ok(&["registry", "logout", &reg.address(), "--node", "a"]);
    let _ = env.mcp(&["stop", &svc]);
    let _ = podman(&["rmi", "-f", &image]);
}

fn digest_of(env: &Env, svc: &str) -> String {
    let st = env.ok(&["status", svc, "--json"]).json();
    st["nodes"][0]["result"]["services"][0]["components"][0]["digest"].as_str().unwrap_or_else(|| panic!("no digest: {st}")).to_string()
}

#[test]
fn pull_always_follows_a_moved_tag_and_missing_keeps_what_it_has() {
    let env = Env::new();
    let reg = Registry::start(&env.dir.path().join("registry"));
    let tag = reg.push(IMAGE, &format!("mcp/{}:latest", env.prefix));
    login(&env, &reg, &reg.address());
    let (always, missing, pinned) = (env.svc("always"), env.svc("missing"), env.svc("pinned"));
    let (pa, pm, pp) = (free_port(), free_port(), free_port());
    let define = |svc: &str, port: u16, image: &str, extra: &str| {
        env.define(svc, &http_service(svc, port, &format!("stop_timeout = 0\n{extra}")).replace(IMAGE, image));
    };
    define(&always, pa, &tag, "pull = \"always\"");
    define(&missing, pm, &tag, "");
    env.ok(&["deploy", &always]);
    env.ok(&["deploy", &missing]);
    let first = http_get(pa, ANSWER).unwrap();
    let d1 = digest_of(&env, &always);
    assert_eq!(digest_of(&env, &missing), d1);
    assert!(d1.starts_with("sha256:") && d1.len() == 71, "{d1}");
    assert!(env.ok(&["ps"]).stdout.contains(&d1[7..19]), "ps shows the short digest");

    // Nothing moved: one registry round trip, "unchanged".
    let r = env.ok(&["deploy", &always, "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "unchanged", "{r}");

    // The tag moves to a new image.
    let v2 = format!("localhost/{}-v2:latest", env.prefix);
    derived_image(&v2, "/www/index.html", b"version two\n");
    reg.push(&v2, &format!("mcp/{}:latest", env.prefix));
    let r = env.ok(&["deploy", &always, "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "replaced", "{r}");
    assert_eq!(http_get(pa, ANSWER).as_deref(), Some("version two\n"));
    let d2 = digest_of(&env, &always);
    assert_ne!(d2, d1, "status shows the new digest");
    // --check-registry asks the registry (no pull): `missing` runs what the tag no longer
    // points at, `always` is current.
    let tag_of = |svc: &str| {
        let st = env.ok(&["status", svc, "--check-registry", "--json"]).json();
        st["nodes"][0]["result"]["services"][0]["components"][0]["tag"].clone()
    };
    let behind = tag_of(&missing);
    assert_eq!(behind["moved"], true, "{behind}");
    let debug = podman(&["image", "inspect", "--format", "{{.Id}} {{.Digest}} {{.RepoDigests}}", &tag]);
    let ctr = podman(&["inspect", "--format", "{{.Image}} {{.ImageDigest}}", &format!("{always}-web")]);
    assert_eq!(behind["digest"], d2.as_str(), "{behind}\nimage: {}\ncontainer: {}", String::from_utf8_lossy(&debug.stdout), String::from_utf8_lossy(&ctr.stdout));
    assert_eq!(tag_of(&always)["moved"], false);
    assert!(env.ok(&["status", &missing, "--check-registry"]).stdout.contains(&format!("MOVED to {}", &d2[7..19])));
    assert!(env.ok(&["status", &missing, "--json"]).json()["nodes"][0]["result"]["services"][0]["components"][0].get("tag").is_none(), "only on request");
    // `missing` keeps the image it has.
    let r = env.ok(&["deploy", &missing, "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "unchanged", "{r}");
    assert_eq!(digest_of(&env, &missing), d1);
    assert_eq!(http_get(pm, ANSWER), Some(first.clone()));

    // A digest reference pins the first image.
    let repo = tag.rsplit_once(':').unwrap().0;
    define(&pinned, pp, &format!("{repo}@{d1}"), "");
    env.ok(&["deploy", &pinned]);
    assert_eq!(http_get(pp, ANSWER), Some(first));
    for svc in [&always, &missing, &pinned] {
        let _ = env.mcp(&["stop", svc]);
    }
    let _ = podman(&["rmi", "-f", &tag, &v2]);
}

/// The registry lost in the middle of a pull (a proxy cuts the connection 2 MiB into an
/// 8 MiB layer): the deploy fails, nothing changed, the previous version serves on. A pull
/// that stalls for 12 s (another proxy) keeps the session alive with progress lines, so a
/// client `--timeout 8` does not fire.
#[test]
fn a_registry_lost_mid_pull_changes_nothing_and_a_slow_pull_keeps_the_session() {
    let env = Env::new();
    let reg = Registry::start(&env.dir.path().join("registry"));
    let small = reg.push(IMAGE, &format!("mcp/{}:v1", env.prefix));
    let local_big = format!("localhost/{}-big:latest", env.prefix);
    derived_image(&local_big, "/blob", &random_bytes(8 << 20));
    let big = reg.push(&local_big, &format!("mcp/{}:big", env.prefix));
    podman_ok(&["rmi", &local_big]);
    let cut = common::registry::Proxy::start(reg.port, 2 << 20, None);
    let slow = common::registry::Proxy::start(reg.port, 2 << 20, Some(Duration::from_secs(12)));
    login(&env, &reg, &cut.address());
    let svc = env.svc("midway");
    let port = free_port();
    let define = |image: &str| env.define(&svc, &http_service(&svc, port, "stop_timeout = 0").replace(IMAGE, image));
    define(&small.replace(&reg.address(), &cut.address()));
    env.ok(&["deploy", &svc]);
    assert!(http_get(port, ANSWER).is_some());
    let id = env.container_id(&format!("{svc}-web")).unwrap();

    define(&big.replace(&reg.address(), &cut.address()));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("pulling") && r.stderr.contains("failed") && r.stderr.contains("nothing was changed"), "{}", r.stderr);
    assert_eq!(env.container_id(&format!("{svc}-web")).as_deref(), Some(id.as_str()), "the previous version is untouched");
    assert!(http_get(port, ANSWER).is_some());

    // The slow pull over SSH, where the client's idle timeout applies.
    let _ = env.mcp(&["stop", &svc]);
    let (_sshd, _state) = ssh_node(&env);
    login(&env, &reg, &slow.address());
    let slow_svc = env.svc("slow");
    let slow_port = free_port();
    env.define(
        &slow_svc,
        &http_service(&slow_svc, slow_port, "stop_timeout = 0").replace(IMAGE, &big.replace(&reg.address(), &slow.address())).replace("node = \"local\"", "node = \"a\""),
    );
    let r = env.mcp(&["--timeout", "8", "deploy", &slow_svc]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("still pulling"), "heartbeats while the pull is silent: {}", r.stderr);
    assert!(http_get(slow_port, ANSWER).is_some());
    let _ = env.mcp(&["stop", &slow_svc]);
    for image in [&small, &big] {
        let _ = podman(&["rmi", "-f", &image.replace(&reg.address(), &cut.address()), &image.replace(&reg.address(), &slow.address())]);
    }
}
