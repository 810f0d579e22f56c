//! How the operator's side names and reaches a node: what `[[nodes]]` in mcp.toml says and
//! where the operator's own mcp files live. Below both the CLI and the transports, which
//! read it (the data flows one way: cli -> transport, never back).

use std::path::PathBuf;

use serde::Deserialize;

pub const LOCAL_ADDRESS: &str = "local";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// `local` (the embedded node: the agent runs as a child process) or `host[:port]`.
    #[serde(default)]
    pub address: String,
    /// More ways to the same node (`host[:port]` each), tried in order after `address`
    /// (e.g. its Tailscale address, then its LAN address); its host key must be the same at
    /// every one.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// SSH user (remote nodes).
    #[serde(default)]
    pub user: Option<String>,
    /// SSH identity file (remote nodes).
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// The agent's command line on the node; default `mcp-agent rpc`.
    #[serde(default)]
    pub agent: Option<String>,
}

impl NodeConfig {
    pub fn is_local(&self) -> bool {
        self.address == LOCAL_ADDRESS
    }

    /// Every address to try, in order: `address` (if given), then `addresses`, each once.
    pub fn ssh_addresses(&self) -> Vec<&str> {
        let mut all: Vec<&str> = Vec::new();
        for a in std::iter::once(&self.address).chain(&self.addresses).filter(|a| !a.is_empty()) {
            if !all.contains(&a.as_str()) {
                all.push(a);
            }
        }
        all
    }

    /// How the node is shown: its addresses, comma-separated.
    pub fn shown_address(&self) -> String {
        self.ssh_addresses().join(",")
    }
}

/// `$XDG_CONFIG_HOME/mcp`, else `~/.config/mcp`.
pub fn config_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mcp"))
}
