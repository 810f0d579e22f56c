//! Nix integration with a real `nix` (offline, no nixpkgs): every .nix file parses, Nix
//! services evaluate to the same plans as their TOML twins, type errors name the file and the
//! option, the flake's nixpkgs-free outputs evaluate, the VM tests have their structure, and a
//! Nix service deploys to the local node on podman.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `nix-instantiate --eval --strict --json -E expr` in the repository; parsed output.
fn nix_eval(expr: &str) -> serde_json::Value {
    let out = Command::new("nix-instantiate")
        .args(["--option", "build-users-group", "", "--eval", "--strict", "--json", "-E", expr])
        .current_dir(repo())
        .output()
        .expect("nix-instantiate runs (apt-get install nix-bin)");
    assert!(out.status.success(), "{expr}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Canonical JSON: keys sorted (serde_json's map is ordered by key), no whitespace.
fn canonical(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap()
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && !name.starts_with('.') && name != "target" {
            nix_files(&p, out);
        } else if name.ends_with(".nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    assert!(files.len() >= 9, "{files:?}");
    for f in files {
        let out = Command::new("nix-instantiate").args(["--option", "build-users-group", "", "--parse"]).arg(&f).output().unwrap();
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn nix_examples_evaluate_to_the_plans_of_their_toml_twins() {
    let env = Env::new();
    let toml = env.ok(&["plan", "--offline", repo().join("examples/hello.toml").to_str().unwrap()]).json();
    // Straight from the evaluator, as nix prints it.
    let raw = nix_eval("(import ./modules/plan.nix).fromFile { file = toString ./examples/hello.nix; }");
    assert_eq!(canonical(&raw[0]), canonical(&toml), "byte-identical after canonical JSON");
    // Through the flake's lib, without nixpkgs.
    let via_flake = nix_eval("((import ./flake.nix).outputs { self = null; nixpkgs = null; }).lib.plansOf ./examples/hello.nix");
    assert_eq!(canonical(&via_flake[0]), canonical(&toml));
    // And through mcp.
    let nix = env.ok(&["plan", "--offline", repo().join("examples/hello.nix").to_str().unwrap()]).json();
    assert_eq!(canonical(&nix), canonical(&toml));
    // A fleet file: several services.
    let fleet = env.ok(&["plan", "--offline", repo().join("examples/fleet.nix").to_str().unwrap()]).json();
    let names: Vec<&str> = fleet.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["blue", "green"]);
    let r = env.mcp(&["deploy", repo().join("examples/fleet.nix").to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("defines 2 services (blue, green)") && r.stderr.contains("mcp sync"), "{}", r.stderr);
}

#[test]
fn type_errors_name_the_file_and_the_option_and_touch_nothing() {
    let env = Env::new();
    let svc = env.svc("typed");
    let cases = [
        ("components.web = { image = \"i\"; ports = [ 8080 ]; };", "components.web.ports: expected a list of strings, got a list whose item 0 is the integer 8080"),
        ("components.web = { image = \"i\"; prots = [ \"80\" ]; };", "components.web.prots: unknown option; expected one of"),
        ("components = [ { name = \"web\"; image = \"i\"; cpus = \"2\"; } ];", "components[0].cpus: expected an integer, got the string \"2\""),
        ("active = \"yes\"; components = [ ];", "active: expected a boolean, got the string \"yes\""),
        ("components.web = { kind = \"vm\"; image = \"i\"; };", "components.web.kind: expected one of \"container\", \"unikernel\""),
        // Evaluates, then fails validation like a TOML file would.
        ("components.web = { image = \"i\"; ports = [ \"80:abc\" ]; };", "components[0].ports[0]"),
    ];
    for (body, want) in cases {
        let file = env.services.join(format!("{svc}.nix"));
        std::fs::write(&file, format!("{{ name = \"{svc}\"; node = \"local\"; {body} }}\n")).unwrap();
        let r = env.mcp(&["deploy", &svc]);
        assert_eq!(r.code, 2, "{body}: {}", r.stderr);
        assert!(r.stderr.contains(file.to_str().unwrap()), "names the file: {}", r.stderr);
        assert!(r.stderr.contains(want), "{body}: {}", r.stderr);
    }
    assert!(env.podman_calls().is_empty(), "no agent was asked: {:?}", env.podman_calls());
    // Without nix: a clear error, not a crash.
    let out = Command::new(MCP)
        .args(["--config", env.config.to_str().unwrap(), "plan", "--offline", &svc])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("install Nix"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn vm_tests_and_flake_checks_have_their_structure() {
    // nixpkgs cannot be fetched here: a stub with `testers.nixosTest = t: t` and the few
    // builders the tests name (each giving a store-path-like string) renders the tests' names,
    // nodes and scripts without building anything.
    let stub = "let drv = name: { outPath = \"/nix/store/stub-${name}\"; }; \
                pkgs = { testers.nixosTest = t: t; stdenv.hostPlatform.system = \"x86_64-linux\"; \
                  writeText = name: text: drv name; buildEnv = a: drv a.name; busybox = drv \"busybox\"; curl = drv \"curl\"; \
                  dockerTools.buildImage = a: drv \"image\"; rustPlatform.buildRustPackage = a: drv a.pname; }; \
                flake = (import ./flake.nix).outputs { self = flake; nixpkgs = { legacyPackages.x86_64-linux = pkgs; legacyPackages.aarch64-linux = pkgs; }; }; \
                in";
    let checks = nix_eval(&format!(
        "{stub} builtins.mapAttrs (n: t: {{ inherit (t) name testScript; nodes = builtins.attrNames t.nodes; }}) flake.checks.x86_64-linux"
    ));
    for (check, name) in [("deploy", "mcp-deploy"), ("drift", "mcp-drift"), ("unikernel", "mcp-unikernel")] {
        assert_eq!(checks[check]["name"], name, "{checks}");
        assert_eq!(checks[check]["nodes"], serde_json::json!(["node", "workstation"]), "{checks}");
        // What the driver runs is Python: it must parse (Nix's indentation stripping and the
        // interpolated setup lines included).
        let script = checks[check]["testScript"].as_str().unwrap();
        let mut py = Command::new("python3")
            .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs (apt-get install python3)");
        std::io::Write::write_all(py.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        let out = py.wait_with_output().unwrap();
        assert!(out.status.success(), "{check}: {}\n{script}", String::from_utf8_lossy(&out.stderr));
        // The workstation's shell runs in /tmp: the setup waits for the node's sshd and
        // writes mcp.toml from files.nix (whose services dir is beside it).
        assert!(script.contains("node.wait_for_open_port(22)") && script.contains("/root/.config/mcp/mcp.toml"), "{script}");
    }
    let outputs = nix_eval(&format!(
        "{stub} {{ apps = builtins.attrNames flake.apps.x86_64-linux; modules = builtins.attrNames flake.nixosModules; \
         lib = builtins.attrNames flake.lib; key = flake.nixosModules.mcp-agent.key; \
         aarch64 = builtins.attrNames flake.checks.aarch64-linux; appMeta = flake.apps.x86_64-linux.deploy.meta ? description; }}"
    ));
    assert_eq!(outputs["apps"], serde_json::json!(["default", "deploy"]));
    assert_eq!(outputs["modules"], serde_json::json!(["default", "mcp-agent"]));
    assert_eq!(outputs["lib"], serde_json::json!(["mkNanosImage", "plan", "plansOf"]));
    assert_eq!(outputs["key"], "mcp-agent");
    assert_eq!(outputs["aarch64"], serde_json::json!(["deploy", "drift"]), "no x86 guests on aarch64");
    assert_eq!(outputs["appMeta"], true);
}

#[test]
fn a_nix_service_deploys_to_the_local_node() {
    let env = Env::new();
    let st = Command::new(repo().join("scripts/build-hello-image")).status().unwrap();
    assert!(st.success());
    // The example names service "hello": leftovers from another run would be in the way.
    let _ = podman(&["rm", "-f", "-t", "0", "hello-web"]);
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = podman(&["rm", "-f", "-t", "0", "hello-web"]);
        }
    }
    let _cleanup = Cleanup;
    let r = env.ok(&["deploy", repo().join("examples/hello.nix").to_str().unwrap(), "--json"]).json();
    assert_eq!(r["result"]["changes"][0]["change"], "created", "{r}");
    assert_eq!(http_get(18080, Duration::from_secs(20)).as_deref(), Some("hello from mcp\n"));
    // A Nix fleet in the services dir: sync deploys each of its services.
    let (a, b) = (env.svc("fa"), env.svc("fb"));
    std::fs::write(
        env.services.join("fleet.nix"),
        format!(
            "let web = {{ image = \"{IMAGE}\"; cmd = [ \"sleep\" \"600\" ]; stop_timeout = 0; }}; in \
             [ {{ name = \"{a}\"; node = \"local\"; components.web = web; }} {{ name = \"{b}\"; node = \"local\"; components.web = web; }} ]"
        ),
    )
    .unwrap();
    env.ok(&["sync"]);
    assert!(env.container_id(&format!("{a}-web")).is_some() && env.container_id(&format!("{b}-web")).is_some());
}

#[test]
fn service_edit_works_on_nix_definitions() {
    let env = Env::new();
    let svc = env.svc("nixedit");
    let file = env.services.join(format!("{svc}.nix"));
    let original = format!(
        "{{ name = \"{svc}\"; node = \"local\";\n  components.web = {{ image = \"{IMAGE}\"; cmd = [ \"sleep\" \"600\" ]; stop_timeout = 0; }};\n}}\n"
    );
    std::fs::write(&file, &original).unwrap();
    env.ok(&["deploy", &svc]);
    let editor = env.dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i \"$SED_SCRIPT\" \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.extra_env.borrow_mut().push(("EDITOR".into(), editor.display().to_string()));
    // A type error: refused, the file kept, the text beside it.
    env.extra_env.borrow_mut().push(("SED_SCRIPT".into(), "s/stop_timeout = 0/stop_timeout = \"0\"/".into()));
    let r = env.mcp(&["service", "edit", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("components.web.stop_timeout: expected an integer"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    assert!(file.with_extension("nix.rejected").exists());
    // A valid edit: saved and deployed.
    env.extra_env.borrow_mut().pop();
    env.extra_env.borrow_mut().push(("SED_SCRIPT".into(), "s/stop_timeout = 0;/stop_timeout = 0; env.EDITED = \"yes\";/".into()));
    let r = env.ok(&["service", "edit", &svc]);
    assert!(r.stdout.contains("1 replaced"), "{}", r.stdout);
    assert!(std::fs::read_to_string(&file).unwrap().contains("EDITED"));
}

/// `expr` with `nix-instantiate --eval --strict --json`, or its error text.
fn nix_try(expr: &str) -> Result<serde_json::Value, String> {
    let out = Command::new("nix-instantiate")
        .args(["--option", "build-users-group", "", "--eval", "--strict", "--json", "-E", expr])
        .current_dir(repo())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What the real modules/nixos.nix renders for `given` (Nix text of services.mcp-agent
/// values), evaluated with tests/module-stub.nix: the package is `pkg` (bin/mcp-agent is
/// the real binary), agent.toml goes to `config`.
fn module_output(given: &str, pkg: &Path, config: &Path) -> Result<serde_json::Value, String> {
    nix_try(&format!(
        "let files = import ./tests/vm/files.nix {{ }}; in import ./tests/module-stub.nix {{ given = {given}; agentDir = \"{}\"; \
         nanosDir = \"{}\"; configPath = \"{}\"; }}",
        pkg.display(),
        common::nanos::toolchain().display(),
        config.display()
    ))
}

/// agent.toml as nixpkgs' `formats.toml` writes it (there with remarshal: JSON to TOML; here
/// with the toml crate, a stand-in for that one step).
fn write_toml(value: &serde_json::Value, path: &Path) {
    std::fs::write(path, toml::to_string(value).expect("settings render as TOML")).unwrap();
}

fn agent_config(config: &Path) -> Run {
    let out = Command::new(AGENT).arg("config").arg("--config").arg(config).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The module's contract with the binaries, for real: the agent.toml it renders from the VM
/// tests' settings is loaded by `mcp-agent config`; its ExecStart is run as is and serves;
/// its authorized_keys lines (a bare key, and one with options) let a real sshd run the
/// forced command, through which `mcp` deploys and reads status.
#[test]
fn module_contract_runs_the_real_agent_and_sshd() {
    let env = Env::new();
    let root = env.dir.path();
    let pkg = root.join("pkg");
    std::fs::create_dir_all(pkg.join("bin")).unwrap();
    std::os::unix::fs::symlink(AGENT, pkg.join("bin/mcp-agent")).unwrap();
    let (config, state, node) = (root.join("agent.toml"), root.join("node-state"), root.join("node"));
    std::fs::create_dir_all(&node).unwrap();
    let (key_a, key_b) = (env.home.join(".ssh/id_ed25519"), root.join("second_key"));
    common::sshd::keygen(&key_a);
    common::sshd::keygen(&key_b);
    // This host's podman settings go through `settings` like any operator's would.
    let podman = match std::env::var("CONTAINERS_CONF") {
        Ok(c) => format!("podman.containers_conf = \"{c}\";"),
        Err(_) => String::new(),
    };
    let given = format!(
        "{{ enable = true; stateDir = \"{}\"; settings = files.agentSettings // {{ {podman} }}; \
         authorizedKeys = [ \"{}\" {{ key = \"{}\"; options = [ ''from=\"127.0.0.1\"'' ]; }} ]; }}",
        state.display(),
        common::sshd::public_key(&key_a),
        common::sshd::public_key(&key_b)
    );
    let out = module_output(&given, &pkg, &config).unwrap_or_else(|e| panic!("{e}"));
    assert!(out["assertions"].as_array().unwrap().iter().all(|a| a["assertion"] == true), "{out}");
    assert_eq!(out["environment"]["XDG_RUNTIME_DIR"], format!("/run/user/{}", out["uid"]), "{out}");
    assert!(out["wants"].as_array().unwrap().contains(&serde_json::json!(format!("user@{}.service", out["uid"]))), "{out}");
    assert_eq!(out["environment"]["HOME"], state.to_str().unwrap(), "podman's storage is under the state dir");
    // #16.6: a uid NixOS never hands out on its own, and the groups podman's logs and KVM need.
    let uid = out["uid"].as_u64().unwrap();
    assert!(!(1000..30000).contains(&uid), "NixOS assigns 1000-29999 to normal users itself: {uid}");
    assert_eq!(out["extraGroups"], serde_json::json!(["systemd-journal", "kvm"]), "{out}");
    assert_eq!(out["ambientCapabilities"], serde_json::json!(["CAP_NET_ADMIN"]), "bridges and taps, nothing more (every child inherits it)");

    // agent.toml: the real agent takes it (the VM tests' monitor setting, the toolchain).
    write_toml(&out["settings"], &config);
    let shown = agent_config(&config);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(shown.stdout.contains("sweep_secs = 5"), "{}", shown.stdout);
    assert!(shown.stdout.contains("[[boot.sequence]]") && shown.stdout.contains("name = \"foundation\""), "the boot order reaches the agent: {}", shown.stdout);
    assert!(shown.stdout.contains("[policy]") && shown.stdout.contains("volume_roots = [\"/srv\"]") && shown.stdout.contains("host_network = false"), "the module's policy reaches the agent: {}", shown.stdout);
    assert!(shown.stdout.contains(&common::nanos::toolchain().display().to_string()), "{}", shown.stdout);

    // ExecStart, word by word as systemd splits it (the contract allows no quoting), runs the
    // daemon: it listens on its socket.
    let argv: Vec<&str> = out["execStart"].as_str().unwrap().split(' ').collect();
    assert_eq!(argv[0], pkg.join("bin/mcp-agent").to_str().unwrap());
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut daemon = Stop(Command::new(argv[0]).args(&argv[1..]).stderr(std::fs::File::create(root.join("daemon.log")).unwrap()).spawn().unwrap());
    let socket = state.join("agent.sock");
    let log = || std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default();
    let listening = wait_for(Duration::from_secs(30), || {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            panic!("the unit's ExecStart exited ({exit}): {}", log());
        }
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    assert!(listening.is_some(), "the unit's ExecStart serves: {}", log());

    // authorized_keys: exactly the module's lines.
    let lines: Vec<String> = out["authorizedKeys"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    assert!(lines[1].contains(",restrict,from=\"127.0.0.1\" ssh-ed25519 "), "{}", lines[1]);
    let sshd = common::sshd::Sshd::start(&node, &lines);
    let node_entry = |identity: &Path| {
        format!(
            "[services]\ndir = \"{}\"\n\n[[nodes]]\nname = \"n\"\naddress = \"{}\"\nuser = \"root\"\nidentity = \"{}\"\nagent = \"ignored: the key's forced command runs\"\n",
            env.services.display(),
            sshd.address(),
            identity.display()
        )
    };
    env.write_config_text(&node_entry(&key_a));
    env.ok(&["login", "--yes"]);
    let svc = env.svc("module");
    env.define(&svc, &format!("name = \"{svc}\"\nnode = \"n\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\ncmd = [\"sleep\", \"600\"]\nstop_timeout = 0\n"));
    env.ok(&["deploy", &svc]);
    assert!(env.container_id(&format!("{svc}-web")).is_some());
    // The forced command reached the daemon's registry: the deploy is there, seen through the
    // second key too (its from= option in place).
    env.write_config_text(&node_entry(&key_b));
    let st = env.ok(&["status", &svc, "--json"]).json();
    assert_eq!(st["nodes"][0]["result"]["services"][0]["name"], svc.as_str(), "{st}");
    assert!(state.join("registry.db").exists());
    signal(daemon.0.id(), libc::SIGTERM);
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "the daemon stops cleanly on SIGTERM: {status} {}", log());
    let _ = env.mcp(&["stop", &svc]);
}

/// Drift between the Nix side and the agent fails here: a settings key the agent does not
/// know stops `mcp-agent config` (and the daemon) with the key named; a state dir that could
/// not go unquoted into ExecStart and authorized_keys, a key with options in the string, and
/// an option smuggling a second command are refused at evaluation.
#[test]
fn module_contract_refuses_what_the_binaries_or_sshd_would_not_take() {
    let env = Env::new();
    let root = env.dir.path();
    let config = root.join("agent.toml");
    let out = module_output("{ enable = true; settings.monitor.sweep = 5; }", root, &config).unwrap();
    write_toml(&out["settings"], &config);
    let r = agent_config(&config);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("unknown field `sweep`") && r.stderr.contains(config.to_str().unwrap()), "{}", r.stderr);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMtest ops@laptop";
    for (given, want) in [
        ("{ enable = true; stateDir = \"/var/lib/my state\"; }", "must be an absolute path"),
        (&format!("{{ enable = true; authorizedKeys = [ ''from=\"10.0.0.1\" {key}'' ]; }}"), "is not a bare public key"),
        (&format!("{{ enable = true; authorizedKeys = [ {{ key = \"{key}\"; options = [ ''command=\"/bin/sh\"'' ]; }} ]; }}"), "is refused"),
    ] {
        let e = module_output(given, root, &config).unwrap_err();
        assert!(e.contains("services.mcp-agent.") && e.contains(want), "{given}: {e}");
    }
}

/// The VM tests' mcp.toml and service files (tests/vm/files.nix, what the test driver copies
/// to the workstation) load with the real `mcp` from another working directory: services are
/// found beside mcp.toml, every plan validates, and the unikernel ones are program-form Nanos
/// guests on the networks the test names.
#[test]
fn vm_test_files_load_with_the_real_mcp_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("mcp-guest");
    std::fs::write(&program, b"\x7fELF").unwrap();
    let files = nix_eval(&format!("import ./tests/vm/files.nix {{ program = \"{}\"; www = \"/srv/www\"; }}", program.display()));
    let home = dir.path().join("home");
    let cfg = home.join(".config/mcp");
    std::fs::create_dir_all(cfg.join("services")).unwrap();
    std::fs::write(cfg.join("mcp.toml"), files["mcpToml"].as_str().unwrap()).unwrap();
    let services = files["services"].as_object().unwrap();
    for (name, text) in services {
        std::fs::write(cfg.join(format!("services/{name}.toml")), text.as_str().unwrap().replace("@WEB@", "10.201.0.2")).unwrap();
    }
    let elsewhere = dir.path().join("tmp");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mcp = |args: &[&str]| {
        let out = Command::new(MCP)
            .args(args)
            .current_dir(&elsewhere)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("MCP_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "mcp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(services.len(), 6, "{files}");
    for name in services.keys() {
        let plan = mcp(&["plan", "--offline", name]);
        assert_eq!(plan["name"], name.as_str(), "{plan}");
        assert_eq!(plan["node"], "node");
    }
    let uk = mcp(&["plan", "--offline", "uk"]);
    assert_eq!(uk["components"][0]["program"], program.to_str().unwrap(), "{uk}");
    assert_eq!(uk["components"][0]["network"], "user");
    assert_eq!(mcp(&["plan", "--offline", "uk-friend"])["components"][0]["cmd"], serde_json::json!(["probe", "10.201.0.2:8080"]));
    assert_eq!(mcp(&["plan", "--offline", "uk-friend"])["components"][0]["network"], "shared");
    assert!(mcp(&["plan", "--offline", "uk-stranger"])["components"][0].get("network").is_none_or(|n| n.is_null()));
}
