//! Static addresses for instances on networks where nothing hands them out (VMs on isolated
//! bridges): one IPv4 pool per node (`[qemu] subnet`); the agent assigns from it and keeps
//! each assignment in the registry.

use std::net::Ipv4Addr;

/// The default pool.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";

/// The addresses VMs on isolated networks are given: one IPv4 subnet for the node. Bridges
/// do not reach each other, so one pool serves every network, and no two VMs on the node
/// ever share an address. The first host address is every guest's (unreachable) gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Pool {
    /// `A.B.C.D/N` with N in 8..=30.
    pub fn parse(s: &str) -> Result<Pool, String> {
        let bad = || format!("{s:?} is not a subnet; expected an IPv4 network such as \"{DEFAULT_SUBNET}\" (prefix 8-30)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Pool { network: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The lowest address not in `used` (neither the network, the gateway nor broadcast).
    pub fn first_free(&self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let base = u32::from(self.network);
        let last = base | !self.mask();
        (base + 2..last).map(Ipv4Addr::from).find(|a| !used.contains(a))
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }

    /// `address/prefix`, as records and `ps` show it.
    pub fn show(&self, a: Ipv4Addr) -> String {
        format!("{a}/{}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_pool() {
        let p = Pool::parse("10.213.7.9/16").unwrap();
        assert_eq!(p, Pool { network: "10.213.0.0".parse().unwrap(), prefix: 16 });
        assert_eq!(p.gateway(), "10.213.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.first_free(&[]), Some("10.213.0.2".parse().unwrap()));
        let used: Vec<Ipv4Addr> = ["10.213.0.2", "10.213.0.4"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(p.first_free(&used), Some("10.213.0.3".parse().unwrap()));
        let tiny = Pool::parse("192.168.5.0/30").unwrap();
        assert_eq!(tiny.first_free(&[]), Some("192.168.5.2".parse().unwrap()));
        assert_eq!(tiny.first_free(&["192.168.5.2".parse().unwrap()]), None, ".3 is broadcast");
        assert!(p.contains("10.213.255.1".parse().unwrap()) && !p.contains("10.214.0.1".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/31", "10.0.0.0/4", "x/16", "10.0.0/16"] {
            assert!(Pool::parse(bad).unwrap_err().contains("is not a subnet"), "{bad}");
        }
        assert_eq!(p.show("10.213.0.5".parse().unwrap()), "10.213.0.5/16");
    }
}
