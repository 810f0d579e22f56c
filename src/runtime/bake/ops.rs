//! The disk-image form with volumes on a node that has NanoVMs' `ops` and no Nanos toolchain:
//! `ops build <cmd[0]>` in the staging root, its top-level dirs as `Dirs`. NOT EXERCISED on
//! the machines mcp is tested on (ops cannot be installed there); with `[nanos] dir` set the
//! agent builds the same image with mkfs instead ([`super::nanos`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::plan::Component;

/// The image name given to `ops build`.
pub const OPS_IMAGE: &str = "mcp-baked";

/// The ops configuration: the program's arguments and environment, and the staging root's
/// top-level dirs (guest paths mirrored there) as `Dirs`.
pub fn ops_config(comp: &Component, dirs: &[String]) -> serde_json::Value {
    // ops puts the program (`ops build <cmd[0]>`) in front of Args itself (its
    // MergeToConfig: `c.Args = append([]string{c.Program}, c.Args...)`): Args is argv[1..].
    let mut config = serde_json::json!({ "Args": comp.cmd.get(1..).unwrap_or_default(), "Dirs": dirs });
    if !comp.env.is_empty() {
        config["Env"] = serde_json::json!(comp.env);
    }
    config
}

/// `ops build <program> -c <config> -i <image>`, run with the staging root as working dir and
/// `OPS_HOME` in the VM's dir.
pub fn ops_argv(program: &str, config: &Path) -> Vec<String> {
    vec!["build".into(), program.into(), "-c".into(), config.display().to_string(), "-i".into(), OPS_IMAGE.into()]
}

/// Where ops lives: the configured path or name, found on PATH.
pub fn find(configured: Option<&Path>) -> Result<PathBuf, String> {
    let wanted = configured.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("ops"));
    which::which(&wanted).map_err(|_| {
        format!(
            "baking volumes into a Nanos disk image needs the Nanos toolchain ([nanos] dir in agent.toml; {}) or `ops` ({}) on the node, \
             and neither is there; or use the kernel form",
            super::nanos::HOW_TO_GET,
            wanted.display()
        )
    })
}

/// Run `ops build` for `comp` with the staged tree in `staging`; the config goes to `config`
/// (owner-only: it may hold the environment), the image under `ops_home`. An `ops` that has
/// not finished within `limit` is killed (with what it started).
pub fn build(ops: &Path, comp: &Component, staging: &Path, config: &Path, ops_home: &Path, limit: Duration) -> Result<(), String> {
    let mut dirs: Vec<String> = std::fs::read_dir(staging)
        .map_err(|e| format!("{}: {e}", staging.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(config);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(config)
            .map_err(|e| format!("{}: {e}", config.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&ops_config(comp, &dirs)).expect("config serializes"))
            .map_err(|e| format!("{}: {e}", config.display()))?;
    }
    let program = comp.cmd.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(ops);
    cmd.args(ops_argv(&program, config)).current_dir(staging).env("OPS_HOME", ops_home).stdin(Stdio::null());
    let out = crate::runtime::child::output_within(&mut cmd, limit).map_err(|e| format!("could not start {}: {e}", ops.display()))?;
    match out.status {
        None => Err(format!("ops build did not finish within {}s and was killed ([qemu] ops_build_secs sets the limit)", limit.as_secs())),
        Some(status) if !status.success() => Err(format!("ops build failed ({status}): {}", String::from_utf8_lossy(&out.stderr).trim())),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_invocation_and_config() {
        let mut comp = Component {
            name: "vm".into(),
            kind: crate::plan::Kind::Unikernel,
            image: "/nix/store/x-app.img".into(),
            volumes: vec!["/srv/app:/srv/app".into()],
            cmd: vec!["/opt/app/server".into(), "--port".into(), "8080".into()],
            network: Some("user".into()),
            ..Default::default()
        };
        comp.env.insert("MODE".into(), "prod".into());
        // A build that never ends is killed at its limit.
        let dir = tempfile::tempdir().unwrap();
        let hung = dir.path().join("ops");
        std::fs::write(&hung, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&hung, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let err = build(&hung, &comp, &staging, &dir.path().join("c.json"), dir.path(), Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not finish within 0s and was killed"), "{err}");

        assert_eq!(
            ops_argv("/opt/app/server", Path::new("/state/vms/s-vm/ops-config.json")),
            vec!["build", "/opt/app/server", "-c", "/state/vms/s-vm/ops-config.json", "-i", "mcp-baked"]
        );
        assert_eq!(
            ops_config(&comp, &["srv".into()]),
            serde_json::json!({"Args": ["--port", "8080"], "Dirs": ["srv"], "Env": {"MODE": "prod"}})
        );
    }
}
