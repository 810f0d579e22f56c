//! What a deploy may ask of this node (`[policy]` in agent.toml). A key that can deploy can
//! otherwise mount any host path, run as root and share the host's network: root on the node.
//! The node's operator narrows that here; a plan asking for more is refused before anything
//! runs, every offending field named. Without `[policy]` everything valid is allowed (what
//! nodes installed before it had); README and the NixOS module set the narrow default below
//! for new installs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::{binds, Component, FieldError, Kind, Plan};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Host dirs volumes may come from (the dir itself or below); unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_roots: Option<Vec<PathBuf>>,
    /// Containers may set `user` to root (`0`, `root`, with any group).
    #[serde(default = "yes")]
    pub root_user: bool,
    /// Containers may use the host's network stack (`network = "host"`).
    #[serde(default = "yes")]
    pub host_network: bool,
    /// Container networks a plan may name; unset: any (but `host` as `host_network` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Unikernel components may run at all.
    #[serde(default = "yes")]
    pub unikernels: bool,
    /// Host dirs a unikernel's program, kernel, initrd or disk image may come from; unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_file_roots: Option<Vec<PathBuf>>,
}

fn yes() -> bool {
    true
}

impl Default for Policy {
    /// Everything valid is allowed.
    fn default() -> Self {
        Policy { volume_roots: None, root_user: true, host_network: true, networks: None, unikernels: true, vm_file_roots: None }
    }
}

/// `path` is `root` or below it (component-wise; plans carry no `..`).
fn under(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

fn list(roots: &[PathBuf]) -> String {
    roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn is_root_user(user: &str) -> bool {
    matches!(user.split(':').next(), Some("0" | "root"))
}

impl Policy {
    /// What `plan` asks for beyond this policy; empty when it may be deployed.
    pub fn check(&self, plan: &Plan) -> Vec<FieldError> {
        let mut out = Vec::new();
        for (i, c) in plan.components.iter().enumerate() {
            self.check_component(&format!("components[{i}]"), c, &mut out);
        }
        out
    }

    fn check_component(&self, at: &str, c: &Component, out: &mut Vec<FieldError>) {
        let mut refuse = |field: String, message: String| out.push(FieldError { field, message });
        if let Some(roots) = &self.volume_roots {
            for (j, b) in binds(&c.volumes).iter().enumerate() {
                if !under(&b.host, roots) {
                    refuse(format!("{at}.volumes[{j}]"), format!("{} is outside the volume roots this node allows ({})", b.host.display(), list(roots)));
                }
            }
        }
        match c.kind {
            Kind::Container => {
                if let Some(u) = c.user.as_deref().filter(|u| !self.root_user && is_root_user(u)) {
                    refuse(format!("{at}.user"), format!("{u:?}: this node does not run containers as root"));
                }
                if let Some(n) = &c.network {
                    if n == "host" && !self.host_network {
                        refuse(format!("{at}.network"), "\"host\": this node does not share its network stack with containers".into());
                    } else if self.networks.as_ref().is_some_and(|allowed| !allowed.contains(n)) {
                        let allowed = self.networks.as_deref().unwrap_or_default().join(", ");
                        refuse(format!("{at}.network"), format!("{n:?} is not one of the networks this node allows ({allowed})"));
                    }
                }
            }
            Kind::Unikernel => {
                if !self.unikernels {
                    refuse(format!("{at}.kind"), "this node runs no unikernels".into());
                }
                if let Some(roots) = &self.vm_file_roots {
                    let image = (!c.image.is_empty()).then_some(c.image.as_str());
                    for (field, path) in [("program", c.program.as_deref()), ("kernel", c.kernel.as_deref()), ("initrd", c.initrd.as_deref()), ("image", image)] {
                        if let Some(p) = path.filter(|p| !under(Path::new(p), roots)) {
                            refuse(format!("{at}.{field}"), format!("{p} is outside the dirs this node runs VM files from ({})", list(roots)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PLAN_VERSION;

    fn plan(components: Vec<Component>) -> Plan {
        Plan { version: PLAN_VERSION, name: "s".into(), node: None, active: true, components }
    }

    #[test]
    fn default_allows_everything_valid() {
        let c = Component { name: "a".into(), image: "i".into(), user: Some("0:0".into()), network: Some("host".into()), volumes: vec!["/etc:/x".into()], ..Default::default() };
        assert!(Policy::default().check(&plan(vec![c])).is_empty());
    }

    #[test]
    fn narrow_policy_names_every_field() {
        let p: Policy = toml::from_str("volume_roots = [\"/srv\"]\nroot_user = false\nhost_network = false\nnetworks = [\"mcpnet\"]\nunikernels = true\nvm_file_roots = [\"/nix/store\"]\n").unwrap();
        let ok = Component { name: "ok".into(), image: "i".into(), user: Some("1000".into()), network: Some("mcpnet".into()), volumes: vec!["/srv/app:/data".into()], ..Default::default() };
        let bad = Component {
            name: "bad".into(),
            image: "i".into(),
            user: Some("root:wheel".into()),
            network: Some("host".into()),
            volumes: vec!["/srv/app:/a".into(), "/srvx:/b".into(), "/etc:/c".into()],
            ..Default::default()
        };
        let other_net = Component { name: "n".into(), image: "i".into(), network: Some("podman".into()), ..Default::default() };
        let vm = Component { name: "vm".into(), kind: Kind::Unikernel, program: Some("/root/app".into()), ..Default::default() };
        let errors = p.check(&plan(vec![ok, bad, other_net, vm]));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["components[1].volumes[1]", "components[1].volumes[2]", "components[1].user", "components[1].network", "components[2].network", "components[3].program"]);
        assert!(errors[0].message.contains("/srvx is outside the volume roots this node allows (/srv)"), "{}", errors[0].message);
        let no_vms: Policy = toml::from_str("unikernels = false").unwrap();
        let vm = Component { name: "vm".into(), kind: Kind::Unikernel, program: Some("/p".into()), ..Default::default() };
        assert_eq!(no_vms.check(&plan(vec![vm]))[0].field, "components[0].kind");
    }
}
