//! Isolated VM networks: a tap per VM on a bridge per network name (or per service), with no
//! address on the host side at all (not even IPv6 link-local), so nothing routes off the host.
//! Nothing hands out addresses there: the agent assigns each VM a static one from the node's
//! pool ([`Pool`], `[qemu] subnet`), and a Nanos guest gets it in its manifest.

use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

use super::record::VmRecord;
use super::{hex, Qemu};
use crate::plan::Component;
use crate::runtime::bake::nanos::StaticIp;
use crate::runtime::address::Pool;
use crate::runtime::RuntimeError;

/// How long one `ip` call may take.
const IP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A VM's place on an isolated network: its tap on a bridge with no address on the host.
/// Components sharing a `network` name share a bridge; without one, each service gets its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolatedNet {
    pub bridge: String,
    pub tap: String,
    pub mac: String,
}

/// Does `comp` sit on an isolated network (and so need an assigned address)?
pub fn isolated(comp: &Component) -> bool {
    comp.network.as_deref() != Some("user")
}

/// Interface names fit Linux's 15 characters; the tap follows the VM's id (stable across
/// renames), the bridge the network (or service) name.
pub fn isolated_net(rec: &VmRecord) -> IsolatedNet {
    let key = match rec.comp.network.as_deref() {
        Some(n) => format!("net:{n}"),
        None => format!("svc:{}", rec.service),
    };
    let m = hex(&format!("mac:{}", rec.id), 6);
    IsolatedNet {
        bridge: format!("mcpb{}", hex(&key, 10)),
        tap: format!("mcpt{}", hex(&rec.id, 10)),
        mac: format!("52:54:00:{}:{}:{}", &m[0..2], &m[2..4], &m[4..6]),
    }
}

/// One `ip` command line.
pub(super) fn ip_argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The `ip` commands that create the bridge (if missing) and the tap on it, in order.
pub fn net_up_argv(net: &IsolatedNet, bridge_exists: bool, tap_exists: bool) -> Vec<Vec<String>> {
    let v = ip_argv;
    let mut out = Vec::new();
    if !bridge_exists {
        out.push(v(&["link", "add", &net.bridge, "type", "bridge"]));
        out.push(v(&["link", "set", &net.bridge, "addrgenmode", "none"]));
    }
    out.push(v(&["link", "set", &net.bridge, "up"]));
    if !tap_exists {
        out.push(v(&["tuntap", "add", "dev", &net.tap, "mode", "tap"]));
        out.push(v(&["link", "set", &net.tap, "addrgenmode", "none"]));
    }
    out.push(v(&["link", "set", &net.tap, "master", &net.bridge]));
    out.push(v(&["link", "set", &net.tap, "up"]));
    out
}

/// The static configuration for an assigned `address/prefix`.
pub fn static_ip(assigned: &str) -> Result<StaticIp, String> {
    let pool = Pool::parse(assigned)?;
    let address: Ipv4Addr = assigned.split('/').next().unwrap_or_default().parse().map_err(|e| format!("{assigned}: {e}"))?;
    Ok(StaticIp { address, netmask: Ipv4Addr::from(pool.mask()), gateway: pool.gateway() })
}

/// Interface names in `/proc/net/dev` (the reading thread's network namespace; /sys/class/net
/// shows the namespace sysfs was mounted in, which is not the agent's under `nsenter --net`).
fn interfaces(dev: &str) -> impl Iterator<Item = &str> {
    dev.lines().skip(2).filter_map(|l| l.split_once(':')).map(|(name, _)| name.trim())
}

/// The names of the ports in `ip -j link show master <bridge>` output.
fn port_names(json: &str) -> Option<Vec<String>> {
    let links: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    links.iter().map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

impl Qemu {
    pub(super) fn ip(&self, args: &[String]) -> Result<String, RuntimeError> {
        let ip = which::which("ip").map_err(|source| RuntimeError::Missing { program: "ip (iproute2)".into(), source })?;
        let mut cmd = Command::new(ip);
        cmd.args(args).stdin(Stdio::null());
        let out = crate::runtime::child::output_within(&mut cmd, IP_LIMIT)
            .map_err(|source| RuntimeError::Spawn { program: "ip".into(), step: args.join(" "), source })?;
        let Some(status) = out.status else {
            return Err(RuntimeError::Hung { program: "ip", step: args.join(" "), secs: IP_LIMIT.as_secs() });
        };
        if status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
            return Err(RuntimeError::Unsupported(format!(
                "isolated VM networking needs root or CAP_NET_ADMIN to create its bridge and tap (`ip {}`: {stderr}); \
                 give the agent that capability, or set network = \"user\"",
                args.join(" ")
            )));
        }
        Err(RuntimeError::Exit { program: "ip", step: args.join(" "), code: status.code().unwrap_or(-1), stderr })
    }

    pub(super) fn link_exists(&self, name: &str) -> bool {
        std::fs::read_to_string("/proc/thread-self/net/dev").is_ok_and(|dev| interfaces(&dev).any(|n| n == name))
    }

    /// The ports of `bridge` (`None` when that cannot be told: then nothing is removed).
    fn bridge_ports(&self, bridge: &str) -> Option<Vec<String>> {
        port_names(&self.ip(&ip_argv(&["-j", "link", "show", "master", bridge])).ok()?)
    }

    /// Held while bridges, taps and probe namespaces are made or removed: a deploy's gate and
    /// the daemon may both be at it.
    pub(super) fn net_lock(&self) -> Result<std::fs::File, RuntimeError> {
        let path = self.dir.with_file_name("net.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(crate::runtime::io_err(format!("opening {}", path.display())))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| crate::runtime::io_err(format!("locking {}", path.display()))(e.into()))?;
        Ok(file)
    }

    /// Bridge and tap for an isolated VM (idempotent).
    pub(super) fn net_up(&self, rec: &VmRecord) -> Result<(), RuntimeError> {
        if !isolated(&rec.comp) {
            return Ok(());
        }
        let net = isolated_net(rec);
        // Under the lock: another VM's net_down must not take the bridge away meanwhile.
        let _lock = self.net_lock()?;
        for argv in net_up_argv(&net, self.link_exists(&net.bridge), self.link_exists(&net.tap)) {
            self.ip(&argv)?;
        }
        Ok(())
    }

    /// Drop the VM's tap, and its bridge once nothing else is on it.
    pub(super) fn net_down(&self, rec: &VmRecord) {
        if !isolated(&rec.comp) {
            return;
        }
        let net = isolated_net(rec);
        if self.link_exists(&net.tap) {
            let _ = self.ip(&ip_argv(&["link", "del", &net.tap]));
        }
        let Ok(_lock) = self.net_lock() else { return };
        if !self.link_exists(&net.bridge) {
            // Gone some other way (by hand, a failed earlier removal): its probe namespace too.
            return self.probe_down_of(&net);
        }
        // The bridge goes once no VM is on it (its probe namespace's veth does not count).
        let Some(ports) = self.bridge_ports(&net.bridge) else { return };
        let probe = self.probe_net_of(&net).ok();
        if ports.iter().all(|port| probe.as_ref().is_some_and(|p| &p.veth == port)) {
            if let Some(p) = &probe {
                self.probe_down(p);
            }
            let _ = self.ip(&ip_argv(&["link", "del", &net.bridge]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::argv::qemu_argv;
    use super::super::argv::tests::rec;
    use super::super::record::VmPaths;
    use super::*;

    #[test]
    fn isolated_network_names_and_commands() {
        let mut comp = Component { name: "vm".into(), kind: crate::plan::Kind::Unikernel, kernel: Some("/k".into()), ..Default::default() };
        let own = isolated_net(&rec(comp.clone()));
        assert!(own.bridge.starts_with("mcpb") && own.bridge.len() == 14, "{own:?}");
        assert!(own.tap.starts_with("mcpt") && own.tap.len() <= 15);
        assert!(own.mac.starts_with("52:54:00:") && own.mac.len() == 17);
        comp.network = Some("backend".into());
        let shared = isolated_net(&rec(comp.clone()));
        let mut other = rec(comp.clone());
        other.service = "other".into();
        other.id = "vm-ffff".into();
        assert_eq!(isolated_net(&other).bridge, shared.bridge, "one network name, one bridge");
        assert_ne!(shared.bridge, own.bridge);
        assert_ne!(isolated_net(&other).tap, shared.tap);
        let argv = qemu_argv(&rec(comp), &VmPaths { dir: "/d".into() }).join(" ");
        assert!(argv.contains(&format!("-netdev tap,id=n0,ifname={},script=no,downscript=no", shared.tap)), "{argv}");
        let cmds: Vec<String> = net_up_argv(&shared, false, false).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            cmds,
            vec![
                format!("link add {} type bridge", shared.bridge),
                format!("link set {} addrgenmode none", shared.bridge),
                format!("link set {} up", shared.bridge),
                format!("tuntap add dev {} mode tap", shared.tap),
                format!("link set {} addrgenmode none", shared.tap),
                format!("link set {} master {}", shared.tap, shared.bridge),
                format!("link set {} up", shared.tap),
            ]
        );
        assert_eq!(net_up_argv(&shared, true, true).len(), 3, "existing links are not created again");
    }

    #[test]
    fn interfaces_and_bridge_ports_as_the_kernel_and_ip_show_them() {
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\nmcpb0123456789: 0 0\n  eth0: 5\n";
        assert_eq!(interfaces(dev).collect::<Vec<_>>(), vec!["lo", "mcpb0123456789", "eth0"]);
        let json = r#"[{"ifindex":5,"ifname":"mcpt1","flags":["UP"]},{"ifindex":7,"ifname":"mcpp0123456789","link_netnsid":0}]"#;
        assert_eq!(port_names(json), Some(vec!["mcpt1".to_string(), "mcpp0123456789".to_string()]));
        assert_eq!(port_names("[]"), Some(vec![]));
        assert_eq!(port_names("Device \"x\" does not exist."), None);
    }

    #[test]
    fn static_ip_of_an_assignment() {
        let ip = static_ip("10.213.0.5/16").unwrap();
        assert_eq!(
            (ip.address.to_string(), ip.netmask.to_string(), ip.gateway.to_string()),
            ("10.213.0.5".into(), "255.255.0.0".into(), "10.213.0.1".into())
        );
        assert!(static_ip("10.213.0.5").is_err());
    }

}
