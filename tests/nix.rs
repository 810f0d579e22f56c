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
    let toml = env.ok(&["plan", repo().join("examples/hello.toml").to_str().unwrap()]).json();
    // Straight from the evaluator, as nix prints it.
    let raw = nix_eval("(import ./modules/plan.nix).fromFile { file = toString ./examples/hello.nix; }");
    assert_eq!(canonical(&raw[0]), canonical(&toml), "byte-identical after canonical JSON");
    // Through the flake's lib, without nixpkgs.
    let via_flake = nix_eval("((import ./flake.nix).outputs { self = null; nixpkgs = null; }).lib.plansOf ./examples/hello.nix");
    assert_eq!(canonical(&via_flake[0]), canonical(&toml));
    // And through mcp.
    let nix = env.ok(&["plan", repo().join("examples/hello.nix").to_str().unwrap()]).json();
    assert_eq!(canonical(&nix), canonical(&toml));
    // A fleet file: several services.
    let fleet = env.ok(&["plan", repo().join("examples/fleet.nix").to_str().unwrap()]).json();
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
        .args(["--config", env.config.to_str().unwrap(), "plan", &svc])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("install Nix"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn vm_tests_and_flake_checks_have_their_structure() {
    // nixpkgs cannot be fetched here: a stub with `testers.nixosTest = t: t` lets the tests'
    // names, nodes and scripts be looked at without building anything.
    let stub = "let pkgs = { testers.nixosTest = t: t; }; \
                flake = (import ./flake.nix).outputs { self = flake; nixpkgs = { legacyPackages.x86_64-linux = pkgs; legacyPackages.aarch64-linux = pkgs; }; }; \
                in";
    let checks = nix_eval(&format!(
        "{stub} builtins.mapAttrs (n: t: {{ inherit (t) name; nodes = builtins.attrNames t.nodes; script = t ? testScript; }}) flake.checks.x86_64-linux"
    ));
    for (check, name) in [("deploy", "mcp-deploy"), ("drift", "mcp-drift"), ("unikernel", "mcp-unikernel")] {
        assert_eq!(checks[check]["name"], name, "{checks}");
        assert_eq!(checks[check]["nodes"], serde_json::json!(["node", "workstation"]), "{checks}");
        assert_eq!(checks[check]["script"], true);
    }
    let outputs = nix_eval(&format!(
        "{stub} {{ apps = builtins.attrNames flake.apps.x86_64-linux; modules = builtins.attrNames flake.nixosModules; \
         lib = builtins.attrNames flake.lib; module = builtins.isFunction flake.nixosModules.mcp-agent; }}"
    ));
    assert_eq!(outputs["apps"], serde_json::json!(["default", "deploy"]));
    assert_eq!(outputs["modules"], serde_json::json!(["default", "mcp-agent"]));
    assert_eq!(outputs["lib"], serde_json::json!(["mkNanosImage", "plan", "plansOf"]));
    assert_eq!(outputs["module"], true);
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
