//! The plan: what a service should look like on its node.
//!
//! A plan is the versioned JSON contract between the operator side (TOML or Nix service files,
//! the `mcp` CLI) and the agent. Both ends check [`PLAN_VERSION`]; both ends run [`validate`].

pub mod export;
mod file;
mod hash;
pub mod health;
pub mod nix;
pub mod routes;
mod validate;
pub mod version;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use file::{build_info, load_service_file, load_service_files, parse_service_toml, to_toml, BuildInfo, LoadError};
pub use routes::{Route, RouteMode};
pub use hash::{hex_prefix, pulled_spec_hash, spec_hash};
pub use health::{Health, HealthCheck, Probe};
pub use validate::{binds, check_name, parse_port, validate, Bind, FieldError, PlanErrors, PortSpec};

/// The plan schema version this build reads and writes. Bump it on any incompatible change.
pub const PLAN_VERSION: u32 = 1;

/// A whole service: the unit `mcp deploy` ships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub version: u32,
    pub name: String,
    /// The node (by name in the operator's config) this service runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub components: Vec<Component>,
}

fn yes() -> bool {
    true
}

/// What runs a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Container,
    Unikernel,
}

/// When a container's image is pulled from its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when the node does not have the image (the default).
    Missing,
    /// On every deploy: the container is replaced when the tag points at a new image.
    Always,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Unikernel => "unikernel",
        }
    }
}

/// One component: a container or a unikernel VM. Field names follow the seed's TOML.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub name: String,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// A table, or the seed's list of `"KEY=VALUE"` strings (the same content is the same spec).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "env_either_form")]
    pub env: BTreeMap<String, String>,
    /// Ports the agent assigns and publishes, named to the program as `$PORT`/`$PORT_<NAME>`
    /// (see [`routes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Seconds `stop` waits for the process before it is killed (podman's default is 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// Container: when its image is pulled (`missing`, the default, or `always`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,
    /// Unikernel, program form: an x86-64 ELF on the node that mcp builds a Nanos image from
    /// (with its libraries when dynamic); `cmd` are its arguments, argv[1..].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Unikernel, kernel form: the kernel to boot (instead of a disk `image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Unikernel, kernel form: its initramfs (baked volumes are appended to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Unikernel, kernel form: the kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// Unikernel: guest memory, as QEMU's `-m` takes it ("256M", "1G"; default 256M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Unikernel: virtual CPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// What the agent probes to call the component healthy: deploys wait for it, the daemon
    /// watches it. Not part of the spec hash: changing a check does not replace anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// `env` as a table or as a list of `"KEY=VALUE"` (split at the first `=`; a key twice is an
/// error, as in a table).
fn env_either_form<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Table(BTreeMap<String, String>),
        List(Vec<String>),
    }
    let list = match Either::deserialize(d)? {
        Either::Table(t) => return Ok(t),
        Either::List(l) => l,
    };
    let mut env = BTreeMap::new();
    for (i, entry) in list.iter().enumerate() {
        // Never the value in an error: it may be a secret.
        let Some((k, v)) = entry.split_once('=') else {
            return Err(serde::de::Error::custom(format!("env[{i}] is not \"KEY=VALUE\"")));
        };
        if env.insert(k.to_string(), v.to_string()).is_some() {
            return Err(serde::de::Error::custom(format!("env sets {k:?} twice")));
        }
    }
    Ok(env)
}

impl Component {
    /// The checked health check (None without one, or when it does not validate).
    pub fn health_check(&self) -> Option<HealthCheck> {
        self.health.as_ref().and_then(|h| h.check().ok())
    }
}

impl Plan {
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// `service` or `service/component`, as the CLI and protocol name a deploy/stop/start target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

impl Target {
    pub fn parse(s: &str) -> Target {
        match s.split_once('/') {
            Some((svc, comp)) if !comp.is_empty() => Target {
                service: svc.to_string(),
                component: Some(comp.to_string()),
            },
            Some((svc, _)) => Target { service: svc.to_string(), component: None },
            None => Target { service: s.to_string(), component: None },
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.component {
            Some(c) => write!(f, "{}/{}", self.service, c),
            None => f.write_str(&self.service),
        }
    }
}

/// The runtime's name for a component: `<service>-<component>`.
pub fn instance_name(service: &str, component: &str) -> String {
    format!("{service}-{component}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parse() {
        assert_eq!(Target::parse("a"), Target { service: "a".into(), component: None });
        assert_eq!(
            Target::parse("a/b"),
            Target { service: "a".into(), component: Some("b".into()) }
        );
        assert_eq!(Target::parse("a/"), Target { service: "a".into(), component: None });
        assert_eq!(Target::parse("a/b").to_string(), "a/b");
    }

    #[test]
    fn plan_json_rejects_unknown_fields() {
        let err = serde_json::from_str::<Plan>(
            r#"{"version":1,"name":"x","components":[{"name":"a","image":"i","imgae":"j"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `imgae`"), "{err}");
    }
}
