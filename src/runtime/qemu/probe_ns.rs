//! The probe namespace of an isolated network, where health checks reach a VM at its own
//! address (`self` in a check). The bridge has no address on the node, by design, so probes
//! cannot come from the node's network namespace: each bridge that a check needs gets a network
//! namespace of its own (`mcp-probe-<bridge>-<id of the agent's network namespace>`, so agents
//! in different namespaces never share one), joined to the bridge by a veth pair and holding the
//! pool's gateway address, which no VM is ever given. It has no other interface and no route
//! anywhere else, so it is no way out for the VMs, and nothing listens in it. Made when a check
//! first needs it; removed with the bridge. Making it takes what the bridge takes (root or
//! CAP_NET_ADMIN), entering it CAP_SYS_ADMIN: a root agent has both.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::net::{isolated, isolated_net, static_ip, IsolatedNet};
use super::record::VmRecord;
use super::Qemu;
use crate::runtime::address::Pool;
use crate::runtime::{ProbeRoute, RuntimeError};

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// The probe end of the veth pair, inside the probe namespace.
const PEER: &str = "probe0";
/// `statfs` type of a namespace file (a bind mount of /proc/<pid>/ns/net).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// Making and entering a network namespace takes CAP_SYS_ADMIN (bit 21 of CapEff).
const CAP_SYS_ADMIN: u32 = 21;

/// Does `/proc/<pid>/status` text show `cap` among the effective capabilities?
fn has_capability(status: &str, cap: u32) -> bool {
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    eff.is_some_and(|mask| mask & (1 << cap) != 0)
}

/// One bridge's probe namespace and how it is joined to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeNet {
    pub netns: String,
    /// The node's end of the veth pair, a port of the bridge.
    pub veth: String,
    pub bridge: String,
    /// The probe end's address: the pool's gateway.
    pub address: String,
}

/// The probe namespace of `net`'s bridge, for an agent in network namespace `netns_id`.
pub fn probe_net(net: &IsolatedNet, pool: Pool, netns_id: u64) -> ProbeNet {
    let tail = net.bridge.strip_prefix("mcpb").unwrap_or(&net.bridge);
    ProbeNet {
        netns: format!("mcp-probe-{}-{netns_id}", net.bridge),
        veth: format!("mcpp{tail}"),
        bridge: net.bridge.clone(),
        address: pool.show(pool.gateway()),
    }
}

/// The `ip` commands that make it, in order (the bridge exists; nothing of this does).
pub fn probe_up_argv(p: &ProbeNet) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    vec![
        v(&["netns", "add", &p.netns]),
        v(&["link", "add", &p.veth, "type", "veth", "peer", "name", PEER, "netns", &p.netns]),
        // No IPv6 link-local on the node's end: the node stays without an address on the bridge.
        v(&["link", "set", &p.veth, "addrgenmode", "none"]),
        v(&["link", "set", &p.veth, "master", &p.bridge]),
        v(&["link", "set", &p.veth, "up"]),
        v(&["-n", &p.netns, "addr", "add", &p.address, "dev", PEER]),
        v(&["-n", &p.netns, "link", "set", PEER, "up"]),
    ]
}

/// The `ip` commands that remove it (each may find its part gone already).
pub fn probe_down_argv(p: &ProbeNet) -> Vec<Vec<String>> {
    vec![vec!["link".into(), "del".into(), p.veth.clone()], vec!["netns".into(), "del".into(), p.netns.clone()]]
}

/// The id (inode) of the calling thread's network namespace.
fn own_netns_id() -> Result<u64, RuntimeError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| RuntimeError::Unsupported(format!("cannot tell which network namespace the agent is in: {e}")))
}

/// Is `path` a network namespace file (and not a leftover plain file)?
fn is_namespace(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    rustix::fs::fstatfs(&file).is_ok_and(|s| s.f_type == NSFS_MAGIC)
}

impl Qemu {
    fn probe_net_of(&self, net: &IsolatedNet) -> Result<ProbeNet, RuntimeError> {
        Ok(probe_net(net, self.pool, own_netns_id()?))
    }

    /// Where `rec`'s own address is reached from, making the probe namespace when missing.
    pub(super) fn probe_route_of(&self, rec: &VmRecord) -> Result<Option<ProbeRoute>, RuntimeError> {
        let Some(assigned) = rec.address.as_deref().filter(|_| isolated(&rec.comp)) else { return Ok(None) };
        let address = static_ip(assigned).map_err(RuntimeError::Unsupported)?.address;
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        if !has_capability(&status, CAP_SYS_ADMIN) {
            return Err(RuntimeError::Unsupported(
                "probes on an isolated network need CAP_SYS_ADMIN: run the agent as root (NixOS: probeIsolatedVMs = true) or use network = \"user\""
                    .into(),
            ));
        }
        let p = self.probe_net_of(&isolated_net(rec))?;
        let path = Path::new(NETNS_DIR).join(&p.netns);
        let _lock = self.net_lock()?;
        if !(is_namespace(&path) && self.link_exists(&p.veth)) {
            if !self.link_exists(&p.bridge) {
                return Err(RuntimeError::Unsupported(format!("the VM's network ({}) is not up", p.bridge)));
            }
            // Whatever half of it a crash left goes first.
            self.probe_down(&p);
            for argv in probe_up_argv(&p) {
                if let Err(e) = self.ip(&argv) {
                    self.probe_down(&p);
                    return Err(e);
                }
            }
            tracing::info!(netns = %p.netns, bridge = %p.bridge, "made the probe namespace of an isolated network");
        }
        Ok(Some(ProbeRoute { netns: path, address: address.into() }))
    }

    /// Remove the probe namespace of `net`'s bridge (when there is one).
    pub(super) fn probe_down_of(&self, net: &IsolatedNet) {
        if let Ok(p) = self.probe_net_of(net) {
            self.probe_down(&p);
        }
    }

    /// Is `name` the node's end of `net`'s probe veth?
    pub(super) fn is_probe_port(&self, net: &IsolatedNet, name: &str) -> bool {
        self.probe_net_of(net).is_ok_and(|p| p.veth == name)
    }

    fn probe_down(&self, p: &ProbeNet) {
        for argv in probe_down_argv(p) {
            let part = argv.last().cloned().unwrap_or_default();
            let present = if argv[0] == "link" { self.link_exists(&part) } else { Path::new(NETNS_DIR).join(&part).exists() };
            if present {
                if let Err(e) = self.ip(&argv) {
                    tracing::warn!(error = %e, "cannot remove part of a probe namespace");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_namespace_per_bridge_and_agent_namespace() {
        let net = IsolatedNet { bridge: "mcpb0123456789".into(), tap: "mcpt1".into(), mac: String::new() };
        let p = probe_net(&net, Pool::parse("10.213.0.0/16").unwrap(), 4026531840);
        assert_eq!(
            p,
            ProbeNet {
                netns: "mcp-probe-mcpb0123456789-4026531840".into(),
                veth: "mcpp0123456789".into(),
                bridge: "mcpb0123456789".into(),
                address: "10.213.0.1/16".into(),
            }
        );
        let up: Vec<String> = probe_up_argv(&p).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            up,
            vec![
                "netns add mcp-probe-mcpb0123456789-4026531840",
                "link add mcpp0123456789 type veth peer name probe0 netns mcp-probe-mcpb0123456789-4026531840",
                "link set mcpp0123456789 addrgenmode none",
                "link set mcpp0123456789 master mcpb0123456789",
                "link set mcpp0123456789 up",
                "-n mcp-probe-mcpb0123456789-4026531840 addr add 10.213.0.1/16 dev probe0",
                "-n mcp-probe-mcpb0123456789-4026531840 link set probe0 up",
            ]
        );
        let down: Vec<String> = probe_down_argv(&p).iter().map(|c| c.join(" ")).collect();
        assert_eq!(down, vec!["link del mcpp0123456789", "netns del mcp-probe-mcpb0123456789-4026531840"]);
        assert!(p.veth.len() <= 15, "an interface name");
        let other = probe_net(&net, Pool::parse("10.213.0.0/16").unwrap(), 4026532000);
        assert_ne!(other.netns, p.netns, "agents in other namespaces get their own");
    }

    #[test]
    fn capabilities_from_proc_status() {
        let status = |eff: &str| format!("Name:\tmcp-agent\nCapInh:\t0000000000000000\nCapEff:\t{eff}\nCapBnd:\t000001ffffffffff\n");
        assert!(has_capability(&status("000001ffffffffff"), CAP_SYS_ADMIN), "root");
        assert!(!has_capability(&status("0000000000001000"), CAP_SYS_ADMIN), "CAP_NET_ADMIN only (the NixOS unit's default)");
        assert!(has_capability(&status("0000000000201000"), CAP_SYS_ADMIN));
        assert!(!has_capability("", CAP_SYS_ADMIN));
    }

    #[test]
    fn only_namespace_files_count() {
        assert!(is_namespace(Path::new("/proc/self/ns/net")));
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_namespace(f.path()), "a leftover plain file");
        assert!(!is_namespace(Path::new("/no/such")));
    }
}
