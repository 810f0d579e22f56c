//! The probe namespace of an isolated network, where health checks reach a VM at its own
//! address (`self` in a check). The bridge has no address on the node, by design, so probes
//! cannot come from the node's network namespace: each bridge that a check needs gets a network
//! namespace of its own (`mcp-probe-<bridge>-<id of the agent's network namespace>`, so agents
//! in different namespaces never share one), joined to the bridge by a veth pair and holding the
//! pool's gateway address, which no VM is ever given. It has no other interface and no route
//! anywhere else, no forwarding, no redirects and no IPv6, so it is no way out for the VMs, and
//! nothing listens in it; each probed VM's MAC is pinned there, so another VM on the network
//! cannot answer for it by ARP. Made when a check first needs it (a marker under the state dir
//! says it was made to the end); removed with the bridge. Making and entering it takes root
//! (CAP_SYS_ADMIN and a writable /run/netns).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::runtime::netns::in_netns;
use super::net::{ip_argv, isolated, isolated_net, static_ip, IsolatedNet};
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
    let v = ip_argv;
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

/// The `ip` command that pins a VM's MAC for its address in the namespace.
pub fn pin_argv(p: &ProbeNet, address: std::net::Ipv4Addr, mac: &str) -> Vec<String> {
    ip_argv(&["-n", &p.netns, "neigh", "replace", &address.to_string(), "lladdr", mac, "dev", PEER, "nud", "permanent"])
}

/// The `ip` commands that remove it (each may find its part gone already).
pub fn probe_down_argv(p: &ProbeNet) -> Vec<Vec<String>> {
    vec![ip_argv(&["link", "del", &p.veth]), ip_argv(&["netns", "del", &p.netns])]
}

/// The id (inode) of the calling thread's network namespace.
fn own_netns_id() -> Result<u64, RuntimeError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| RuntimeError::Unsupported(format!("cannot tell which network namespace the agent is in: {e}")))
}

/// Is `file` a namespace file (and not a leftover plain file)?
fn is_namespace(file: &std::fs::File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|s| s.f_type == NSFS_MAGIC)
}

/// What a made namespace's marker file holds: the namespace's inode and the probe address, so
/// a namespace made again (another inode) or a changed `[qemu] subnet` is not taken as ready.
fn marker_text(ns: &std::fs::File, p: &ProbeNet) -> Option<String> {
    Some(format!("{} {}\n", ns.metadata().ok()?.ino(), p.address))
}

/// A new namespace is not neutral (it inherits `ip_forward` and IPv6 autoconfiguration from
/// the node on many kernels): no forwarding, no redirects, no IPv6 (so `probe0`, made after
/// this, never gets a link-local address or takes a VM's router advertisement). Written by a
/// thread inside the namespace: /proc/sys/net is the opener's namespace's.
fn neutralize(ns: &std::fs::File) -> Result<(), RuntimeError> {
    const SETTINGS: [(&str, &str); 7] = [
        ("ipv4/ip_forward", "0"),
        ("ipv4/conf/all/send_redirects", "0"),
        ("ipv4/conf/default/send_redirects", "0"),
        ("ipv4/conf/all/accept_redirects", "0"),
        ("ipv4/conf/default/accept_redirects", "0"),
        ("ipv6/conf/all/disable_ipv6", "1"),
        ("ipv6/conf/default/disable_ipv6", "1"),
    ];
    in_netns(ns, "probe-ns-setup", || {
        for (key, value) in SETTINGS {
            let path = format!("/proc/sys/net/{key}");
            match std::fs::write(&path, value) {
                // A node without IPv6 has no ipv6 settings to turn off.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && key.starts_with("ipv6") => {}
                other => other.map_err(|e| format!("setting {path}: {e}"))?,
            }
        }
        Ok(())
    })
    .map_err(RuntimeError::Unsupported)
}

/// The namespace file of `p`, when it is one.
fn open_namespace(p: &ProbeNet) -> Option<std::fs::File> {
    std::fs::File::open(Path::new(NETNS_DIR).join(&p.netns)).ok().filter(is_namespace)
}

impl Qemu {
    pub(super) fn probe_net_of(&self, net: &IsolatedNet) -> Result<ProbeNet, RuntimeError> {
        Ok(probe_net(net, self.pool, own_netns_id()?))
    }

    fn marker(&self, p: &ProbeNet) -> std::path::PathBuf {
        self.dir.with_file_name("probe-ns").join(&p.netns)
    }

    /// The namespace when it was made to the end (its marker says so) and is still joined to
    /// the bridge: no lock, no `ip` call on this path, which every probe takes.
    fn ready(&self, p: &ProbeNet) -> Option<std::fs::File> {
        let ns = open_namespace(p)?;
        let made = std::fs::read_to_string(self.marker(p)).ok()?;
        (Some(made) == marker_text(&ns, p) && self.link_exists(&p.veth)).then_some(ns)
    }

    /// Where `rec`'s own address is reached from, making the probe namespace when missing.
    pub(super) fn probe_route_of(&self, rec: &VmRecord) -> Result<Option<ProbeRoute>, RuntimeError> {
        let Some(assigned) = rec.address.as_deref().filter(|_| isolated(&rec.comp)) else { return Ok(None) };
        let address = static_ip(assigned).map_err(RuntimeError::Unsupported)?.address;
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        if !has_capability(&status, CAP_SYS_ADMIN) {
            return Err(RuntimeError::Unsupported(
                "probes on an isolated network need CAP_SYS_ADMIN: run the agent as root, or use network = \"user\" and probe a forwarded port"
                    .into(),
            ));
        }
        let net = isolated_net(rec);
        let p = self.probe_net_of(&net)?;
        let ns = match self.ready(&p) {
            Some(ns) => ns,
            None => {
                let _lock = self.net_lock()?;
                match self.ready(&p) {
                    Some(ns) => ns,
                    None => self.make_probe_ns(&p)?,
                }
            }
        };
        self.pin_neighbour(&ns, &p, address, &net.mac)?;
        Ok(Some(ProbeRoute { netns: ns, address: address.into() }))
    }

    /// Make `p` from nothing (whatever half of it a crash left goes first); under the lock.
    fn make_probe_ns(&self, p: &ProbeNet) -> Result<std::fs::File, RuntimeError> {
        if !self.link_exists(&p.bridge) {
            return Err(RuntimeError::Unsupported(format!("the VM's network ({}) is not up", p.bridge)));
        }
        self.probe_down(p);
        let made = (|| {
            let mut steps = probe_up_argv(p).into_iter();
            self.ip(&steps.next().unwrap_or_default())?;
            let ns = open_namespace(p).ok_or_else(|| RuntimeError::Unsupported(format!("`ip netns add {}` made no namespace", p.netns)))?;
            neutralize(&ns)?;
            for argv in steps {
                self.ip(&argv)?;
            }
            let marker = self.marker(p);
            let text = marker_text(&ns, p).unwrap_or_default();
            std::fs::create_dir_all(marker.parent().unwrap_or(Path::new("/"))).map_err(crate::runtime::io_err("the probe-ns dir"))?;
            std::fs::write(&marker, text).map_err(crate::runtime::io_err(format!("writing {}", marker.display())))?;
            Ok(ns)
        })();
        match made {
            Ok(ns) => {
                tracing::info!(netns = %p.netns, bridge = %p.bridge, "made the probe namespace of an isolated network");
                Ok(ns)
            }
            Err(e) => {
                self.probe_down(p);
                Err(e)
            }
        }
    }

    /// The probed VM's MAC, pinned in the namespace (a permanent neighbour entry, which ARP
    /// cannot change): another VM on the network cannot answer the probes meant for this one
    /// by claiming its address. Once per namespace, address and MAC in this process.
    fn pin_neighbour(&self, ns: &std::fs::File, p: &ProbeNet, address: std::net::Ipv4Addr, mac: &str) -> Result<(), RuntimeError> {
        let key = (ns.metadata().map(|m| m.ino()).unwrap_or_default(), address, mac.to_string());
        let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        if !pinned.contains(&key) {
            self.ip(&pin_argv(p, address, mac))?;
            pinned.insert(key);
        }
        Ok(())
    }

    /// Remove the probe namespace of `net`'s bridge (when there is one).
    pub(super) fn probe_down_of(&self, net: &IsolatedNet) {
        if let Ok(p) = self.probe_net_of(net) {
            self.probe_down(&p);
        }
    }

    pub(super) fn probe_down(&self, p: &ProbeNet) {
        let _ = std::fs::remove_file(self.marker(p));
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
        assert_eq!(
            pin_argv(&p, "10.213.0.5".parse().unwrap(), "52:54:00:aa:bb:cc").join(" "),
            "-n mcp-probe-mcpb0123456789-4026531840 neigh replace 10.213.0.5 lladdr 52:54:00:aa:bb:cc dev probe0 nud permanent"
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
        assert!(is_namespace(&std::fs::File::open("/proc/self/ns/net").unwrap()));
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_namespace(f.as_file()), "a leftover plain file");
    }
}
