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
    /// Host dirs the files a plan makes the agent read may come from (a unikernel's program,
    /// kernel, initrd or disk image, a health check's `ca`); unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_file_roots: Option<Vec<PathBuf>>,
    /// Deploy keys may log the node in to registries (and install a registry's CA).
    #[serde(default = "yes")]
    pub registry_admin: bool,
}

/// Refused fields as one message: "field: why; field: why".
pub fn refusal(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

fn yes() -> bool {
    true
}

impl Default for Policy {
    /// Everything valid is allowed.
    fn default() -> Self {
        Policy { volume_roots: None, root_user: true, host_network: true, networks: None, unikernels: true, vm_file_roots: None, registry_admin: true }
    }
}

/// `path` is `root` or below it (component-wise; plans carry no `..`).
fn under(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

fn list(roots: &[PathBuf]) -> String {
    roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A user that is surely not root: a numeric uid other than 0 (a name may map to uid 0 in
/// the image's /etc/passwd, "00" is 0 too, and no user at all is the image's, often root).
fn surely_not_root(user: Option<&str>) -> bool {
    user.and_then(|u| u.split(':').next()).and_then(|uid| uid.parse::<u32>().ok()).is_some_and(|uid| uid != 0)
}

/// Walk `path` from the allowed root it is under, one component at a time, never following a
/// symlink: a link inside an allowed root (a container can make one in its own volume) must
/// not lead a volume, a VM file or a transfer outside it. Missing components are fine (podman
/// refuses a missing bind source). The check is for this moment; what can change a root's
/// contents later is what can write it (README says to keep the roots' parents root-owned).
pub fn no_links_below(path: &Path, roots: &[PathBuf]) -> Result<(), String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let Some(root) = roots.iter().filter(|r| path.starts_with(r)).max_by_key(|r| r.components().count()) else { return Ok(()) };
    let rel = path.strip_prefix(root).unwrap_or(Path::new(""));
    if rel.as_os_str().is_empty() {
        return Ok(());
    }
    let base = match rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(format!("{}: {}", root.display(), std::io::Error::from(e))),
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(&base, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), resolve) {
        Ok(_) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::XDEV) => {
            Err(format!("{} goes through a symbolic link below {}; it must be a real path", path.display(), root.display()))
        }
        Err(e) => Err(format!("{}: {}", path.display(), std::io::Error::from(e))),
    }
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

    /// What one component asks for beyond this policy (every create checks it again: a
    /// component registered before the policy was narrowed is not made again).
    pub fn check_one(&self, c: &Component) -> Vec<FieldError> {
        let mut out = Vec::new();
        self.check_component(&c.name, c, &mut out);
        out
    }

    /// The volume dirs of `plan` a transfer may use: those this policy allows, reached
    /// without a symlink.
    pub fn transfer_roots(&self, roots: Vec<PathBuf>) -> Vec<PathBuf> {
        match &self.volume_roots {
            None => roots,
            Some(allowed) => roots.into_iter().filter(|r| under(r, allowed) && no_links_below(r, allowed).is_ok()).collect(),
        }
    }

    fn check_component(&self, at: &str, c: &Component, out: &mut Vec<FieldError>) {
        let mut refuse = |field: String, message: String| out.push(FieldError { field, message });
        if let Some(roots) = &self.volume_roots {
            for (j, b) in binds(&c.volumes).iter().enumerate() {
                if !under(&b.host, roots) {
                    refuse(format!("{at}.volumes[{j}]"), format!("{} is outside the volume roots this node allows ({})", b.host.display(), list(roots)));
                } else if let Err(why) = no_links_below(&b.host, roots) {
                    refuse(format!("{at}.volumes[{j}]"), why);
                }
            }
        }
        match c.kind {
            Kind::Container => {
                if !self.root_user && !surely_not_root(c.user.as_deref()) {
                    let what = c.user.as_deref().map(|u| format!("{u:?}")).unwrap_or_else(|| "unset (the image's user, often root)".into());
                    refuse(format!("{at}.user"), format!("{what}: this node runs containers only as a numeric uid other than 0, e.g. user = \"1000\""));
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
                let image = (!c.image.is_empty()).then_some(c.image.as_str());
                for (field, path) in [("program", c.program.as_deref()), ("kernel", c.kernel.as_deref()), ("initrd", c.initrd.as_deref()), ("image", image)] {
                    self.check_file(&format!("{at}.{field}"), path, &mut refuse);
                }
            }
        }
        let ca = c.health.as_ref().and_then(|h| h.ca.as_deref());
        self.check_file(&format!("{at}.health.ca"), ca, &mut refuse);
    }

    /// A file on the node the agent reads for a plan: under `vm_file_roots`, reached without a
    /// symlink below them.
    fn check_file(&self, field: &str, path: Option<&str>, refuse: &mut dyn FnMut(String, String)) {
        let (Some(roots), Some(p)) = (&self.vm_file_roots, path) else { return };
        if !under(Path::new(p), roots) {
            refuse(field.to_string(), format!("{p} is outside the dirs this node reads files for plans from ({})", list(roots)));
        } else if let Err(why) = no_links_below(Path::new(p), roots) {
            refuse(field.to_string(), why);
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
    fn links_below_an_allowed_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        std::fs::create_dir_all(root.join("app/real")).unwrap();
        std::os::unix::fs::symlink("/", root.join("app/r")).unwrap();
        let roots = vec![root.clone()];
        assert!(no_links_below(&root.join("app/real"), &roots).is_ok());
        assert!(no_links_below(&root.join("app/missing/deeper"), &roots).is_ok());
        let e = no_links_below(&root.join("app/r/etc"), &roots).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(Policy { volume_roots: Some(roots), ..Default::default() }.transfer_roots(vec![root.join("app/r"), root.join("app/real")]), vec![root.join("app/real")]);
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
        let other_net = Component { name: "n".into(), image: "i".into(), user: Some("1000".into()), network: Some("podman".into()), ..Default::default() };
        let vm = Component { name: "vm".into(), kind: Kind::Unikernel, program: Some("/root/app".into()), ..Default::default() };
        let errors = p.check(&plan(vec![ok, bad, other_net, vm]));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["components[1].volumes[1]", "components[1].volumes[2]", "components[1].user", "components[1].network", "components[2].network", "components[3].program"]);
        assert!(errors[0].message.contains("/srvx is outside the volume roots this node allows (/srv)"), "{}", errors[0].message);
        for user in [Some("00"), Some("admin"), None, Some("0:1000")] {
            let c = Component { name: "u".into(), image: "i".into(), user: user.map(str::to_string), ..Default::default() };
            assert_eq!(p.check(&plan(vec![c]))[0].field, "components[0].user", "{user:?}");
        }
        let no_vms: Policy = toml::from_str("unikernels = false").unwrap();
        let vm = Component { name: "vm".into(), kind: Kind::Unikernel, program: Some("/p".into()), ..Default::default() };
        assert_eq!(no_vms.check(&plan(vec![vm]))[0].field, "components[0].kind");
    }

    #[test]
    fn a_health_checks_ca_comes_from_the_file_roots() {
        let policy = Policy { vm_file_roots: Some(vec!["/srv".into()]), ..Default::default() };
        let mut c = Component { name: "a".into(), image: "i".into(), ..Default::default() };
        c.health = Some(crate::plan::Health { http: Some("https://127.0.0.1/".into()), ca: Some("/etc/shadow".into()), ..Default::default() });
        let refused = policy.check(&plan(vec![c.clone()]));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].field, "components[0].health.ca");
        c.health.as_mut().unwrap().ca = Some("/srv/app/ca.pem".into());
        assert!(policy.check(&plan(vec![c])).is_empty());
    }
}
