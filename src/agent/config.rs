//! Agent configuration: the state dir, and how podman is run. Read from `<state>/agent.toml`
//! (or `--config`), then overridden by flags and environment variables.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::alert::AlertConfig;
use super::monitor::{MonitorConfig, RetentionConfig};
use crate::runtime::bake::nanos::NanosConfig;
use crate::runtime::podman::PodmanConfig;
use crate::runtime::qemu::QemuConfig;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub podman: PodmanConfig,
    /// How unikernel VMs are run.
    #[serde(default)]
    pub qemu: QemuConfig,
    /// The Nanos toolchain the program form's images are built with.
    #[serde(default)]
    pub nanos: NanosConfig,
    /// The daemon's drift monitor.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// How many events the registry keeps.
    #[serde(default)]
    pub events: RetentionConfig,
    /// The daemon's alert hook.
    #[serde(default)]
    pub alert: AlertConfig,
    /// What a deploy may ask of this node (default: everything valid).
    #[serde(default)]
    pub policy: super::policy::Policy,
    /// The order services come back in when the node recovers.
    #[serde(default)]
    pub boot: super::boot::BootConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid agent config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Load `path`; a missing file is the default config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<AgentConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let parse = |message: String| ConfigError::Parse { path: path.to_path_buf(), message };
                let config: AgentConfig = toml::from_str(&text).map_err(|e| parse(e.to_string().trim_end().to_string()))?;
                config.boot.check().map_err(parse)?;
                Ok(config)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(AgentConfig::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }
}

/// The default state dir: /var/lib/mcp-agent for root, else `$XDG_DATA_HOME/mcp-agent`
/// (`~/.local/share/mcp-agent`).
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/mcp-agent");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("mcp-agent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podman_section_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, "[podman]\nargs = [\"--runtime\", \"runc\"]\ncontainers_conf = \"/etc/c.conf\"\nsettle_ms = 0\n").unwrap();
        let c = AgentConfig::load(&p, true).unwrap();
        assert_eq!(c.podman.args, vec!["--runtime", "runc"]);
        assert_eq!(c.podman.settle_ms, Some(0));
        std::fs::write(&p, "[monitor]\nsweep_secs = 5\n[events]\nmax_count = 100\n[alert]\ncommand = [\"/bin/hook\", \"-x\"]\nkinds = [\"drift\"]\n").unwrap();
        let c = AgentConfig::load(&p, true).unwrap();
        assert_eq!((c.monitor.sweep_secs, c.events.max_count), (Some(5), Some(100)));
        assert_eq!(c.alert.command, vec!["/bin/hook", "-x"]);
        std::fs::write(&p, "[nanos]\ndir = \"/opt/nanos\"\n[qemu]\nsubnet = \"10.5.0.0/16\"\n").unwrap();
        let c = AgentConfig::load(&p, true).unwrap();
        assert_eq!((c.nanos.dir.as_deref(), c.qemu.subnet.as_deref()), (Some(Path::new("/opt/nanos")), Some("10.5.0.0/16")));
        std::fs::write(&p, "[[boot.sequence]]\nname = \"base\"\nservices = [\"dns\"]\nrequired = true\ntimeout = \"1m\"\n").unwrap();
        assert_eq!(AgentConfig::load(&p, true).unwrap().boot.sequence[0].services, vec!["dns"]);
        std::fs::write(&p, "[[boot.sequence]]\nname = \"base\"\ntimeout = \"later\"\n").unwrap();
        let e = AgentConfig::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("agent.toml") && e.contains("\"later\""), "{e}");
        std::fs::write(&p, "[podman]\nargz = []\n").unwrap();
        let e = AgentConfig::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("agent.toml") && e.contains("argz"), "{e}");
        assert_eq!(AgentConfig::load(&dir.path().join("none.toml"), false).unwrap(), AgentConfig::default());
        assert!(AgentConfig::load(&dir.path().join("none.toml"), true).is_err());
    }
}
