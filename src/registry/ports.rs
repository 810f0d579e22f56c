//! Host ports the agent assigned to routes: kept across redeploys (a route keeps its port),
//! unique on the node, released when the route or its service goes.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{Registry, RegistryError};
use crate::plan::routes::{FIRST_PORT, LAST_PORT};

impl Registry {
    /// The port of each of `routes` (keys) of `service`/`component`: the one it has, else the
    /// first port in [`FIRST_PORT`]..=[`LAST_PORT`] no route holds and `free` accepts,
    /// recorded (one write transaction, so two deploys never get the same). `None` for a route
    /// when no port is left.
    pub fn assign_ports(
        &mut self,
        service: &str,
        component: &str,
        routes: &[&str],
        free: &dyn Fn(u16) -> bool,
    ) -> Result<Vec<(String, Option<u16>)>, RegistryError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(routes.len());
        for route in routes {
            let had: Option<u16> = tx
                .query_row(
                    "SELECT port FROM route_ports WHERE service = ?1 AND component = ?2 AND route = ?3",
                    params![service, component, route],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(p) = had {
                out.push((route.to_string(), Some(p)));
                continue;
            }
            let used: std::collections::BTreeSet<u16> = {
                let mut stmt = tx.prepare("SELECT port FROM route_ports")?;
                let rows = stmt.query_map([], |r| r.get::<_, u16>(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let pick = (FIRST_PORT..=LAST_PORT).find(|p| !used.contains(p) && free(*p));
            if let Some(p) = pick {
                tx.execute("INSERT INTO route_ports (service, component, route, port) VALUES (?1, ?2, ?3, ?4)", params![service, component, route, p])?;
            }
            out.push((route.to_string(), pick));
        }
        tx.commit()?;
        Ok(out)
    }

    /// Release `service`'s route ports other than `keep` ((component, route) pairs).
    pub fn release_ports(&mut self, service: &str, keep: &[(&str, &str)]) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        let held: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT component, route FROM route_ports WHERE service = ?1")?;
            let rows = stmt.query_map(params![service], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (c, r) in held.iter().filter(|(c, r)| !keep.contains(&(c.as_str(), r.as_str()))) {
            tx.execute("DELETE FROM route_ports WHERE service = ?1 AND component = ?2 AND route = ?3", params![service, c, r])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether `service` holds (node addresses, route ports).
    pub fn holdings(&self, service: &str) -> Result<(bool, bool), RegistryError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM addresses WHERE service = ?1), EXISTS(SELECT 1 FROM route_ports WHERE service = ?1)",
            [service],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// Every assigned port, as (service, component, route, port).
    pub fn route_ports(&self) -> Result<Vec<(String, String, String, u16)>, RegistryError> {
        let mut stmt = self.conn.prepare("SELECT service, component, route, port FROM route_ports ORDER BY service, component, route")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
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
        let all = |_: u16| true;
        let got = r.assign_ports("a", "api", &["", "rest"], &all).unwrap();
        assert_eq!(got, vec![("".into(), Some(FIRST_PORT)), ("rest".into(), Some(FIRST_PORT + 1))]);
        // Kept across a redeploy; another service gets the next; a port in use on the host is passed over.
        assert_eq!(r.assign_ports("a", "api", &["rest"], &all).unwrap(), vec![("rest".into(), Some(FIRST_PORT + 1))]);
        let busy = |p: u16| p != FIRST_PORT + 2;
        assert_eq!(r.assign_ports("b", "web", &[""], &busy).unwrap(), vec![("".into(), Some(FIRST_PORT + 3))]);
        r.release_ports("a", &[("api", "rest")]).unwrap();
        assert_eq!(r.route_ports().unwrap().len(), 2);
        assert_eq!(r.assign_ports("c", "x", &[""], &all).unwrap(), vec![("".into(), Some(FIRST_PORT))], "freed and reused");
        r.release_ports("a", &[]).unwrap();
        assert!(!r.route_ports().unwrap().iter().any(|(s, ..)| s == "a"));
        assert_eq!(r.assign_ports("d", "x", &[""], &|_| false).unwrap(), vec![("".into(), None)], "none left");
    }
}
