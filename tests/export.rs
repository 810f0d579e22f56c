//! `mcp service export --format kube`: the YAML passes the Kubernetes API's schemas (strict,
//! offline), runs under `podman kube play` as it is and serves what the mcp-deployed service
//! served; `podman kube down` removes it again.
//! (quadlet units cannot run here: podman 4.3 has no quadlet; their text is unit-tested.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

struct KubeDown(PathBuf);

impl Drop for KubeDown {
    fn drop(&mut self) {
        let _ = podman(&["kube", "down", self.0.to_str().unwrap()]);
    }
}

#[test]
fn exported_kube_yaml_runs_under_podman_kube_play() {
    let env = Env::new();
    let svc = env.svc("kube");
    let port = free_port();
    env.define(
        &svc,
        &format!(
            "name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\nports = [\"127.0.0.1:{port}:8080\"]\n\
             cmd = [\"/bin/httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\nrestart = \"always\"\nstop_timeout = 0\n\
             [components.health]\ncmd = [\"cat\", \"/www/index.html\"]\ninterval = \"2s\"\n"
        ),
    );
    env.ok(&["deploy", &svc]);
    let served = http_get(port, Duration::from_secs(20)).expect("mcp's copy serves");

    let yaml = env.dir.path().join("kube.yaml");
    env.ok(&["service", "export", &svc, yaml.to_str().unwrap(), "--format", "kube"]);
    assert_eq!(std::fs::metadata(&yaml).unwrap().permissions().mode() & 0o777, 0o600, "it may hold the environment");
    let text = std::fs::read_to_string(&yaml).unwrap();
    for want in ["kind: \"Pod\"", &format!("hostPort: {port}"), &format!("mcp.service: \"{svc}\""), "restartPolicy: \"Always\"", "livenessProbe:", "readinessProbe:"] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }

    // The Kubernetes API's own schemas (v1.30, strict: an unknown field fails), offline:
    // kubernetes-validate from PyPI, installed by scripts/install-deps.
    let validate = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/py/bin/kubernetes-validate");
    assert!(validate.exists(), "{} is missing: run scripts/install-deps", validate.display());
    let out = std::process::Command::new(&validate).args(["--strict", "-k", "1.30.0"]).arg(&yaml).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains(&format!("passed for resource pod/{svc}-web")), "{said}");
    let broken = env.dir.path().join("broken.yaml");
    std::fs::write(&broken, text.replace("periodSeconds", "periodSecs")).unwrap();
    let out = std::process::Command::new(&validate).args(["--strict", "-k", "1.30.0"]).arg(&broken).output().unwrap();
    assert!(!out.status.success(), "the check can fail: an unknown field is refused");

    // mcp's copy out of the way (it holds the port), the exported one in its place.
    env.ok(&["stop", &svc]);
    podman_ok(&["rm", "-f", &format!("{svc}-web")]);
    let _down = KubeDown(yaml.clone());
    podman_ok(&["kube", "play", yaml.to_str().unwrap()]);
    assert_eq!(http_get(port, Duration::from_secs(20)), Some(served), "the same answer");
    podman_ok(&["kube", "down", yaml.to_str().unwrap()]);
    assert!(http_get(port, Duration::from_millis(300)).is_none(), "kube down removed it");
}
