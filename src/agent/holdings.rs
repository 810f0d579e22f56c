//! What a service holds on the node besides its instances (a node address per VM component,
//! a host port per route), given back once its record no longer uses it.

use super::Agent;

impl Agent {
    /// Free what `service` holds but its registered components no longer use (all of it when
    /// the service is gone). Best effort: a leftover is freed by the next deploy or removal.
    pub(super) fn release_unused(&self, service: &str) {
        // Most services hold nothing (containers without routes): then there is nothing to read.
        let held = self.registry().holdings(service);
        let (addresses, ports) = match held {
            Ok(h) => h,
            Err(e) => return tracing::warn!(service, error = %e, "cannot read what the service holds in the registry"),
        };
        if !addresses && !ports {
            return;
        }
        let record = match self.registry().service(service) {
            Ok(r) => r,
            Err(e) => return tracing::warn!(service, error = %e, "cannot read the registry to release addresses and ports"),
        };
        let components = || record.iter().flat_map(|r| &r.components).map(|c| &c.spec);
        if addresses {
            let keep: Vec<&str> = components().filter(|c| self.runtime.address_pool(c).is_some()).map(|c| c.name.as_str()).collect();
            if let Err(e) = self.registry().release_addresses(service, &keep) {
                tracing::warn!(service, error = %e, "cannot release addresses");
            }
        }
        if ports {
            let keep: Vec<(&str, &str)> = components().flat_map(|c| c.routes.iter().map(|r| (c.name.as_str(), r.key()))).collect();
            if let Err(e) = self.registry().release_ports(service, &keep) {
                tracing::warn!(service, error = %e, "cannot release route ports");
            }
        }
    }
}
