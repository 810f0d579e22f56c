//! #16.4: the seed operator's own service files load unchanged and work: `env` as a list of
//! "KEY=VALUE" (the same spec as the table form), `path` and `[build.images]`, and
//! `[[components.routes]]` whose ports the agent assigns, publishes and hands to the program
//! as $PORT / $PORT_<NAME>, kept across redeploys. `mcp build` builds and pushes to a real
//! registry that `mcp deploy` then pulls from; `mcp undeploy` leaves nothing but the data dir.

mod common;

use std::time::Duration;

use common::registry::Registry;
use common::*;

const ANSWER: Duration = Duration::from_secs(20);

/// The assigned port of the route shown as `<name> 127.0.0.1:<port> -> ...` in status.
fn route_port(env: &Env, svc: &str, name: &str) -> u16 {
    let st = env.ok(&["status", svc, "--json"]).json();
    let routes = st["nodes"][0]["result"]["services"][0]["components"][0]["routes"].as_array().cloned().unwrap_or_default();
    let line = routes.iter().filter_map(|r| r.as_str()).find(|r| r.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no route {name}: {st}"));
    line.split_whitespace().nth(1).and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

fn seed_file(svc: &str, env_form: &str, data: &std::path::Path) -> String {
    format!(
        "name = \"{svc}\"\nnode = \"local\"\nactive = true\npath = \"{svc}\"\n\n[build.images]\n\"{svc}\" = \"Dockerfile\"\n\n\
         [[components]]\nname = \"api\"\nimage = \"{IMAGE}\"\nrestart = \"unless-stopped\"\n{env_form}\nvolumes = [\"{}:/srv/data\"]\nstop_timeout = 1\n\
         cmd = [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo \\\"$PORT $PORT_REST $GREETING $MODE\\\" > /www/seen.txt; httpd -f -p $PORT -h /www & httpd -f -p $PORT_REST -h /www & wait\"]\n\n\
         [[components.routes]]\nport = 443\nmode = \"l7\"\nhostname = \"seed.example\"\n\n\
         [[components.routes]]\nname = \"rest\"\nport = 8443\nmode = \"l4\"\n",
        data.display()
    )
}

#[test]
fn a_seed_format_file_deploys_with_routes_and_undeploy_keeps_only_its_data() {
    let env = Env::new();
    let svc = env.svc("seed");
    let data = env.dir.path().join("srv-seed");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("keep.db"), "rows").unwrap();
    env.define(&svc, &seed_file(&svc, "env = [\"GREETING=hello\", \"MODE=a=b\"]", &data));
    env.ok(&["deploy", &svc]);
    let (port, rest) = (route_port(&env, &svc, "port"), route_port(&env, &svc, "rest"));
    assert!((10000..=60000).contains(&port) && (10000..=60000).contains(&rest) && port != rest, "{port} {rest}");
    // The program listens where it was told, published on 127.0.0.1, and saw its environment.
    let seen = http_get_path(port, "/seen.txt", ANSWER);
    assert_eq!(seen.as_deref(), Some(format!("{port} {rest} hello a=b\n").as_str()));
    assert_eq!(http_get_path(rest, "/seen.txt", ANSWER), seen);
    let ps = env.ok(&["ps"]).stdout;
    assert!(ps.contains(&format!("port 127.0.0.1:{port} -> seed.example:443 (l7)")) && ps.contains(&format!("rest 127.0.0.1:{rest} -> -:8443 (l4)")), "{ps}");
    assert!(env.ok(&["status", &svc]).stdout.contains(&format!("{svc}/api: rest 127.0.0.1:{rest}")));

    // The table form of the same env is the same spec; the ports stay across redeploys.
    env.define(&svc, &seed_file(&svc, "env = { MODE = \"a=b\", GREETING = \"hello\" }", &data));
    let r = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "unchanged", "{r}");
    env.define(&svc, &seed_file(&svc, "env = [\"GREETING=hi\", \"MODE=a=b\"]", &data));
    let r = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "replaced", "{r}");
    assert_eq!((route_port(&env, &svc, "port"), route_port(&env, &svc, "rest")), (port, rest), "kept across a redeploy");
    assert_eq!(http_get_path(port, "/seen.txt", ANSWER), Some(format!("{port} {rest} hi a=b\n")));
    // What the operator sees of the spec is what they wrote: no assigned ports in it.
    let shown = env.ok(&["service", "show", &svc]).stdout;
    assert!(!shown.contains(&port.to_string()) && shown.contains("routes"), "{shown}");

    // Bad list entries are refused before anything changes, without echoing a value.
    env.define(&svc, &seed_file(&svc, "env = [\"GREETING=hi\", \"NOEQUALS\"]", &data));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("env[1] is not \"KEY=VALUE\""), "{}", r.stderr);

    // Undeploy: container, registry entry and ports gone; the data dir stays.
    env.define(&svc, &seed_file(&svc, "env = [\"GREETING=hi\", \"MODE=a=b\"]", &data));
    let r = env.ok(&["undeploy", &svc]);
    assert!(r.stdout.contains("undeployed"), "{}", r.stdout);
    assert_eq!(env.container_state(&format!("{svc}-api")), None);
    assert!(!env.ok(&["list"]).stdout.contains(&svc));
    let db = rusqlite::Connection::open(env.state.join("registry.db")).unwrap();
    let held: i64 = db.query_row("SELECT count(*) FROM route_ports WHERE service = ?1", [&svc], |r| r.get(0)).unwrap();
    assert_eq!(held, 0, "the ports are released");
    assert_eq!(std::fs::read_to_string(data.join("keep.db")).unwrap(), "rows");
    assert_eq!(env.mcp(&["undeploy", &svc]).code, 4, "no such service any more");
}

#[test]
fn mcp_build_builds_and_pushes_then_deploy_pulls_it() {
    let env = Env::new();
    let reg = Registry::start(&env.dir.path().join("registry"));
    let svc = env.svc("built");
    let image = format!("{}/mcp/{svc}:v1", reg.address());
    // The workspace: [build] in mcp.toml, the service's `path` below it.
    let workspace = env.dir.path().join("workspace");
    let src = workspace.join("src-built");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Dockerfile"), format!("FROM {IMAGE}\nCOPY built.txt /www/built.txt\n")).unwrap();
    std::fs::write(src.join("built.txt"), "built by mcp build\n").unwrap();
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.write_config_text(&format!("{config}\n[build]\nworkspace = \"{}\"\n", workspace.display()));
    let port = free_port();
    let definition = http_service(&svc, port, "stop_timeout = 0").replace(IMAGE, &image);
    env.define(&svc, &format!("path = \"src-built\"\n{definition}\n[build.images]\n\"{svc}\" = \"Dockerfile\"\n"));
    // The agent (pulls) and this machine's podman (pushes) both know the registry.
    let r = env.mcp_stdin(&["registry", "login", &reg.address(), "--ca-file", reg.ca.to_str().unwrap(), "-u", &reg.user, "--password-stdin"], &reg.password);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (auth, _) = reg.client();
    std::fs::create_dir_all(env.home.join(".config/containers")).unwrap();
    std::fs::copy(&auth, env.home.join(".config/containers/auth.json")).unwrap();

    let r = env.mcp(&["build", &svc]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("built {image}")) && r.stdout.contains(&format!("pushed {image}")), "{}", r.stdout);
    // The node pulls it (not the local copy the build left).
    let _ = podman(&["rmi", "-f", &image]);
    env.ok(&["deploy", &svc]);
    assert_eq!(http_get_path(port, "/built.txt", ANSWER).as_deref(), Some("built by mcp build\n"));

    // A [build.images] entry no component runs is refused before anything is built.
    env.define(&svc, &format!("path = \"src-built\"\n{definition}\n[build.images]\nother = \"Dockerfile\"\n"));
    let r = env.mcp(&["build", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no component runs an image named other"), "{}", r.stderr);
    let _ = env.mcp(&["undeploy", &svc]);
    let _ = podman(&["rmi", "-f", &image]);
}
