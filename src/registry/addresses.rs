//! Static addresses the agent assigned to components (VMs on isolated networks): kept across
//! redeploys, unique on the node, released when the component goes.

use std::net::Ipv4Addr;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{Registry, RegistryError};
use crate::runtime::address::Pool;

impl Registry {
    /// The address of `service`/`component`: the one it has when that is in `pool`, else the
    /// pool's first free one, recorded (one write transaction, so two deploys never get the
    /// same). `None` when the pool is full.
    pub fn assign_address(&mut self, service: &str, component: &str, pool: &Pool) -> Result<Option<String>, RegistryError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let had: Option<(String, u8)> = tx
            .query_row("SELECT address, prefix FROM addresses WHERE service = ?1 AND component = ?2", params![service, component], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((a, prefix)) = &had {
            if let Ok(a) = a.parse::<Ipv4Addr>() {
                if pool.contains(a) && *prefix == pool.prefix {
                    return Ok(Some(pool.show(a)));
                }
            }
        }
        let used: Vec<Ipv4Addr> = {
            let mut stmt = tx.prepare("SELECT address FROM addresses WHERE NOT (service = ?1 AND component = ?2)")?;
            let rows = stmt.query_map(params![service, component], |r| r.get::<_, String>(0))?;
            rows.filter_map(|r| r.ok()?.parse().ok()).collect()
        };
        let Some(free) = pool.first_free(&used) else { return Ok(None) };
        tx.execute(
            "INSERT INTO addresses (service, component, address, prefix) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (service, component) DO UPDATE SET address = excluded.address, prefix = excluded.prefix",
            params![service, component, free.to_string(), pool.prefix],
        )?;
        tx.commit()?;
        Ok(Some(pool.show(free)))
    }

    /// Release the addresses of `service`'s components other than `keep`.
    pub fn release_addresses(&mut self, service: &str, keep: &[&str]) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        let held: Vec<String> = {
            let mut stmt = tx.prepare("SELECT component FROM addresses WHERE service = ?1")?;
            let rows = stmt.query_map(params![service], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for c in held.iter().filter(|c| !keep.contains(&c.as_str())) {
            tx.execute("DELETE FROM addresses WHERE service = ?1 AND component = ?2", params![service, c])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every assignment, as (service, component, `address/prefix`).
    pub fn addresses(&self) -> Result<Vec<(String, String, String)>, RegistryError> {
        let mut stmt = self.conn.prepare("SELECT service, component, address, prefix FROM addresses ORDER BY service, component")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, format!("{}/{}", r.get::<_, String>(2)?, r.get::<_, u8>(3)?)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_once_kept_unique_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(&dir.path().join("r.db")).unwrap();
        let pool = Pool::parse("10.213.0.0/16").unwrap();
        assert_eq!(r.assign_address("a", "vm", &pool).unwrap().as_deref(), Some("10.213.0.2/16"));
        assert_eq!(r.assign_address("b", "vm", &pool).unwrap().as_deref(), Some("10.213.0.3/16"));
        assert_eq!(r.assign_address("a", "vm", &pool).unwrap().as_deref(), Some("10.213.0.2/16"), "stable");
        r.release_addresses("a", &[]).unwrap();
        assert_eq!(r.addresses().unwrap(), vec![("b".into(), "vm".into(), "10.213.0.3/16".into())]);
        assert_eq!(r.assign_address("c", "vm", &pool).unwrap().as_deref(), Some("10.213.0.2/16"), "freed and reused");
        r.release_addresses("b", &["vm"]).unwrap();
        assert_eq!(r.addresses().unwrap().len(), 2, "kept");
        // Another pool (the subnet was changed): a new address from it.
        let other = Pool::parse("192.168.7.0/24").unwrap();
        assert_eq!(r.assign_address("b", "vm", &other).unwrap().as_deref(), Some("192.168.7.2/24"));
        let tiny = Pool::parse("192.168.9.0/30").unwrap();
        assert_eq!(r.assign_address("d", "vm", &tiny).unwrap().as_deref(), Some("192.168.9.2/30"));
        assert_eq!(r.assign_address("e", "vm", &tiny).unwrap(), None, "full");
    }
}
