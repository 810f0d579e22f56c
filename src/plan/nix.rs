//! Service definitions written in Nix: `modules/plan.nix` (embedded here) evaluates them with
//! plain builtins, so any `nix-instantiate` works offline; the JSON it prints is then read and
//! validated exactly like a TOML file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{LoadError, Plan};

/// The evaluator (also `lib` of the flake).
pub const PLAN_NIX: &str = include_str!("../../modules/plan.nix");

/// `nix-instantiate` arguments that evaluate `file` (absolute) to a JSON list of plans.
pub fn eval_argv(file: &Path) -> Vec<String> {
    vec![
        "--eval".into(),
        "--strict".into(),
        "--json".into(),
        // Evaluation builds nothing; keep nix quiet about a missing build group.
        "--option".into(),
        "build-users-group".into(),
        String::new(),
        "-E".into(),
        PLAN_NIX.into(),
        "-A".into(),
        "fromFile".into(),
        "--argstr".into(),
        "file".into(),
        file.display().to_string(),
    ]
}

/// The message of a failed evaluation: nix's `error:` lines, without the prefix and traces.
pub fn nix_error(stderr: &str) -> String {
    let mut out = Vec::new();
    let mut in_error = false;
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("error: ") {
            in_error = true;
            out.push(rest.trim().to_string());
        } else if in_error && !line.trim().is_empty() && !line.trim_start().starts_with("…") && !line.contains("(use '--show-trace'") {
            out.push(line.trim().to_string());
        } else if in_error && line.trim().is_empty() && !out.is_empty() {
            in_error = false;
        }
    }
    if out.is_empty() {
        stderr.trim().to_string()
    } else {
        out.join(" ")
    }
}

/// Every plan `path` defines (one service, or a fleet), not yet validated.
pub fn eval_file(path: &Path) -> Result<Vec<Plan>, LoadError> {
    let abs: PathBuf = std::fs::canonicalize(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    let nix = which::which("nix-instantiate").map_err(|e| LoadError::NixMissing { path: path.to_path_buf(), why: e.to_string() })?;
    let out = Command::new(nix)
        .args(eval_argv(&abs))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LoadError::NixMissing { path: path.to_path_buf(), why: e.to_string() })?;
    if !out.status.success() {
        return Err(LoadError::Nix { path: path.to_path_buf(), message: nix_error(&String::from_utf8_lossy(&out.stderr)) });
    }
    serde_json::from_slice::<Vec<Plan>>(&out.stdout)
        .map_err(|e| LoadError::Parse { path: path.to_path_buf(), message: format!("the Nix evaluation gave an unexpected plan: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_without_noise() {
        let stderr = "warning: the group 'nixbld' does not exist\nerror: /s/x.nix: components.web.ports: expected a list of strings, got the integer 1\n(use '--show-trace' to show detailed location information)\n";
        assert_eq!(nix_error(stderr), "/s/x.nix: components.web.ports: expected a list of strings, got the integer 1");
    }

    #[test]
    fn argv_evaluates_the_embedded_module() {
        let a = eval_argv(Path::new("/s/x.nix"));
        assert_eq!(a[..6], ["--eval", "--strict", "--json", "--option", "build-users-group", ""]);
        assert_eq!(a[6], "-E");
        assert!(a[7].contains("fromFile"));
        assert_eq!(a[8..], ["-A", "fromFile", "--argstr", "file", "/s/x.nix"]);
    }
}
