//! The operator's config: `~/.config/mcp/mcp.toml` (XDG_CONFIG_HOME respected; `--config` or
//! `MCP_CONFIG` override). With no file at all: one node `local` and services in `./services`;
//! a file without `[services]` means the `services` dir beside it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::node::{config_dir, NodeConfig, LOCAL_ADDRESS};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    services: Option<ServicesSection>,
    #[serde(default)]
    nodes: Vec<NodeConfig>,
    #[serde(default)]
    build: Option<BuildSection>,
    /// Seed-era sections: accepted (with a warning) so old files load.
    #[serde(default)]
    mcias: Option<toml::Value>,
    #[serde(default)]
    auth: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesSection {
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSection {
    /// Where the services' sources are (a service file's `path` is relative to it).
    workspace: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    pub services_dir: PathBuf,
    pub nodes: Vec<NodeConfig>,
    /// `[build] workspace`: where `mcp build` finds the services' sources.
    pub workspace: Option<PathBuf>,
    /// Things the operator should know (deprecated sections...).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// The built-in config: the local node only.
    pub fn embedded() -> Config {
        Config {
            path: None,
            services_dir: PathBuf::from("services"),
            nodes: vec![NodeConfig { name: "local".into(), address: LOCAL_ADDRESS.into(), addresses: Vec::new(), user: None, identity: None, agent: None }],
            workspace: None,
            warnings: Vec::new(),
        }
    }

    /// Find and load the config: an explicit path must exist; the default one may not.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = explicit {
            return Config::load(p);
        }
        let path = default_path();
        match path {
            Some(p) if p.exists() => Config::load(&p),
            _ => Ok(Config::embedded()),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string().trim_end().to_string() })?;
        let mut warnings = Vec::new();
        for (section, present) in [("mcias", file.mcias.is_some()), ("auth", file.auth.is_some())] {
            if present {
                warnings.push(format!(
                    "{}: [{section}] is ignored: mcp authenticates to nodes with SSH keys (see `mcp login`)",
                    path.display()
                ));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        // Without [services]: the dir beside the file, so a command finds the same services
        // from any working directory (a test driver's shell runs in /tmp).
        let services_dir = resolve(base, file.services.as_ref().map_or(Path::new("services"), |s| &s.dir));
        let mut nodes = file.nodes;
        if nodes.is_empty() {
            nodes = Config::embedded().nodes;
        }
        for (i, n) in nodes.iter().enumerate() {
            if n.name.is_empty() || n.ssh_addresses().is_empty() {
                return Err(ConfigError::Invalid { path: path.into(), message: format!("nodes[{i}] needs a name and an address (or addresses)") });
            }
            if n.addresses.iter().any(|a| a == LOCAL_ADDRESS) || (n.is_local() && !n.addresses.is_empty()) {
                let message = format!("node {:?}: `local` is a node of its own, not one of several addresses", n.name);
                return Err(ConfigError::Invalid { path: path.into(), message });
            }
            for a in n.ssh_addresses().into_iter().filter(|a| *a != LOCAL_ADDRESS) {
                if let Err(why) = crate::transport::ssh::parse_address(a) {
                    return Err(ConfigError::Invalid { path: path.into(), message: format!("node {:?}: {why}", n.name) });
                }
            }
            if nodes[..i].iter().any(|m| m.name == n.name) {
                return Err(ConfigError::Invalid { path: path.into(), message: format!("node {:?} is defined twice", n.name) });
            }
        }
        for n in &mut nodes {
            n.identity = n.identity.as_deref().map(|p| resolve(base, p));
        }
        let workspace = file.build.map(|b| resolve(base, &b.workspace));
        Ok(Config { path: Some(path.to_path_buf()), services_dir, nodes, workspace, warnings })
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Where the config came from, for messages.
    pub fn origin(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "the built-in default config (no mcp.toml found)".into(),
        }
    }
}

/// `<config dir>/mcp.toml`.
pub fn default_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("mcp.toml"))
}

/// `~/x` to the home dir; relative paths against the config file's dir.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_loads_with_warnings() {
        let text = r#"
[services]
dir = "/home/u/.config/mcp/services"

[mcias]
server_url   = "https://mcias.metacircular.net:8443"
service_name = "mcp"

[auth]
token_path = "/home/u/.config/mcp/token"

[[nodes]]
name = "rift"
address = "100.95.252.120:9444"
"#;
        let c = Config::parse(text, Path::new("/etc/mcp.toml")).unwrap();
        assert_eq!(c.services_dir, PathBuf::from("/home/u/.config/mcp/services"));
        assert_eq!(c.nodes.len(), 1);
        assert!(!c.nodes[0].is_local());
        assert_eq!(c.warnings.len(), 2);
        assert!(c.warnings[0].contains("[mcias] is ignored"));
    }

    #[test]
    fn relative_dir_and_defaults() {
        let c = Config::parse("[services]\ndir = \"svc\"\n", Path::new("/cfg/mcp.toml")).unwrap();
        assert_eq!(c.services_dir, PathBuf::from("/cfg/svc"));
        assert_eq!(c.nodes[0].name, "local");
        assert!(c.nodes[0].is_local());
        let c = Config::parse("[[nodes]]\nname = \"n\"\naddress = \"n\"\n", Path::new("/cfg/mcp.toml")).unwrap();
        assert_eq!(c.services_dir, PathBuf::from("/cfg/services"), "no [services]: beside the file, not the cwd");
    }

    #[test]
    fn errors_name_the_file() {
        let e = Config::parse("[[nodes]]\nname = \"a\"\naddress = \"local\"\nadress = \"x\"\n", Path::new("/c/mcp.toml")).unwrap_err();
        assert!(e.to_string().contains("/c/mcp.toml") && e.to_string().contains("adress"), "{e}");
        let e = Config::parse("[[nodes]]\nname = \"a\"\naddress = \"local\"\n[[nodes]]\nname = \"a\"\naddress = \"h\"\n", Path::new("m")).unwrap_err();
        assert!(e.to_string().contains("defined twice"));
    }
}
