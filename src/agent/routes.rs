//! Routes, agent side: the host port each route of a component gets (assigned once, kept in
//! the registry), folded into the spec the runtime runs ([`crate::plan::routes::expand`]),
//! and released when the route or its service goes.

use super::Agent;
use crate::plan::routes::{self, FIRST_PORT, LAST_PORT};
use crate::plan::Component;
use crate::proto::{ErrorCode, RpcError};

/// Nothing on the host listens on `port` (any address): a new assignment must not collide
/// with a program mcp did not start.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

impl Agent {
    /// `c` as it runs: its routes' ports published and named in its environment. With
    /// `assign`, a route without a port gets one (a deploy); without, only what is held is
    /// used (a preview: a route not assigned yet makes the component new anyway).
    pub(super) fn with_routes(&self, service: &str, c: &Component, assign: bool) -> Result<Component, RpcError> {
        if c.routes.is_empty() {
            return Ok(c.clone());
        }
        let keys: Vec<&str> = c.routes.iter().map(|r| r.key()).collect();
        let got: Vec<(String, Option<u16>)> = if assign {
            self.registry().assign_ports(service, &c.name, &keys, &port_free)?
        } else {
            let held = self.reader().route_ports()?;
            let port = |k: &str| held.iter().find(|(s, comp, r, _)| s == service && *comp == c.name && r == k).map(|h| h.3);
            keys.iter().map(|k| (k.to_string(), port(k))).collect()
        };
        if let Some((key, _)) = got.iter().find(|(_, p)| p.is_none()).filter(|_| assign) {
            let route = if key.is_empty() { "its route".to_string() } else { format!("route {key:?}") };
            return Err(RpcError::new(
                ErrorCode::Runtime,
                format!("{service}/{}: no free host port left in {FIRST_PORT}-{LAST_PORT} for {route}; nothing was changed", c.name),
            ));
        }
        let assigned: Vec<(String, u16)> = got.into_iter().filter_map(|(k, p)| Some((k, p?))).collect();
        Ok(routes::expand(c, &assigned))
    }
}
