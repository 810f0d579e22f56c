//! Routes (`[[components.routes]]`, the seed's format): a port the agent assigns on the node
//! for each of a container's routes, published on 127.0.0.1 (or the route's `bind`) and given
//! to the program as `$PORT` (the unnamed route) or `$PORT_<NAME>`, where it listens. `port`,
//! `mode` and `hostname` say how a front proxy should serve it; registering with a proxy is
//! not mcp's job (yet). The assignment is the agent's ([`expand`] folds it into the spec it
//! runs, [`strip`] takes it out again for the operator's eyes); everything here is pure.

use serde::{Deserialize, Serialize};

use super::{Component, Kind};

/// Host ports the agent assigns from.
pub const FIRST_PORT: u16 = 10000;
pub const LAST_PORT: u16 = 60000;
/// Routes one component may have: each holds a port of the node.
pub const MAX_ROUTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Names the port in the environment (`$PORT_<NAME>`); without one: `$PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port a front proxy serves the route on (the program gets an assigned one).
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RouteMode>,
    /// The name a front proxy serves the route under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The host address the assigned port is published on (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// TCP passed through (TLS ends in the program).
    L4,
    /// HTTP: the proxy ends TLS.
    L7,
}

impl Route {
    /// The key the assignment is kept under: the name, or "" for the unnamed route.
    pub fn key(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// `PORT` or `PORT_<NAME>` (upper case, `-` as `_`).
    pub fn env_name(&self) -> String {
        match &self.name {
            None => "PORT".into(),
            Some(n) => format!("PORT_{}", n.to_ascii_uppercase().replace('-', "_")),
        }
    }

    fn publish(&self, port: u16) -> String {
        let bind = self.bind.as_deref().unwrap_or("127.0.0.1");
        if bind.contains(':') {
            format!("[{bind}]:{port}:{port}")
        } else {
            format!("{bind}:{port}:{port}")
        }
    }

    /// `rest 127.0.0.1:12345 -> api.example:8443 (l7)`: what `ps` and `status` show.
    pub fn show(&self, assigned: Option<u16>) -> String {
        let name = self.name.as_deref().unwrap_or("port");
        let at = assigned.map_or_else(|| "unassigned".to_string(), |p| format!("{}:{p}", self.bind.as_deref().unwrap_or("127.0.0.1")));
        let host = self.hostname.as_deref().unwrap_or("-");
        let mode = match self.mode {
            Some(RouteMode::L4) => " (l4)",
            Some(RouteMode::L7) => " (l7)",
            None => "",
        };
        format!("{name} {at} -> {host}:{}{mode}", self.port)
    }
}

/// What is wrong with `comp`'s routes, as (field below the component, message).
pub fn check(comp: &Component) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if comp.routes.is_empty() {
        return errors;
    }
    if comp.routes.len() > MAX_ROUTES {
        errors.push(("routes".into(), format!("{} routes: at most {MAX_ROUTES} per component (each takes a port of the node)", comp.routes.len())));
    }
    if comp.kind != Kind::Container {
        errors.push(("routes".into(), "routes are for containers; a unikernel publishes with `ports` (network = \"user\")".into()));
    }
    let mut keys = Vec::new();
    for (i, r) in comp.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(n) = &r.name {
            let ok = !n.is_empty() && n.len() <= 32 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                errors.push((format!("{at}.name"), format!("{n:?}: use 1-32 letters, digits, '-' or '_' (it names $PORT_<NAME>)")));
            }
        }
        if keys.contains(&r.env_name()) {
            let what = r.name.as_deref().map_or_else(|| "more than one route without a name".to_string(), |n| format!("route name {n:?} twice"));
            errors.push((format!("{at}.name"), format!("{what}: each route needs its own ${}", r.env_name())));
        }
        keys.push(r.env_name());
        if r.port == 0 {
            errors.push((format!("{at}.port"), "port must be 1-65535".into()));
        }
        if let Some(h) = &r.hostname {
            let ok = !h.is_empty() && h.len() <= 253 && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                errors.push((format!("{at}.hostname"), format!("{h:?} is not a host name")));
            }
        }
        if let Some(b) = &r.bind {
            if b.parse::<std::net::IpAddr>().is_err() {
                errors.push((format!("{at}.bind"), format!("{b:?} is not an IP address (default 127.0.0.1)")));
            }
        }
        if comp.env.contains_key(&r.env_name()) {
            errors.push((at.clone(), format!("env sets {} itself; the agent sets it to the route's assigned port", r.env_name())));
        }
    }
    if matches!(comp.network.as_deref(), Some("host" | "none")) {
        errors.push(("routes".into(), "routes publish a port: not with network = \"host\" or \"none\"".into()));
    }
    errors
}

/// `comp` as it runs with the assigned ports (`(route key, port)`): each route's port
/// published (`bind:P:P`) and named in the environment. Routes without an assignment are
/// left out (the caller assigns first).
pub fn expand(comp: &Component, assigned: &[(String, u16)]) -> Component {
    let mut out = comp.clone();
    for r in &comp.routes {
        let Some((_, port)) = assigned.iter().find(|(k, _)| k == r.key()) else { continue };
        out.ports.push(r.publish(*port));
        out.env.insert(r.env_name(), port.to_string());
    }
    out
}

/// The assigned ports [`expand`] folded into `comp` (read back from its environment).
pub fn assigned(comp: &Component) -> Vec<(String, u16)> {
    comp.routes.iter().filter_map(|r| Some((r.key().to_string(), comp.env.get(&r.env_name())?.parse().ok()?))).collect()
}

/// Each route of `comp` (as it runs: assigned ports folded in) as [`Route::show`] says it.
pub fn shown(comp: &Component) -> Vec<String> {
    let held = assigned(comp);
    comp.routes.iter().map(|r| r.show(held.iter().find(|(k, _)| k == r.key()).map(|h| h.1))).collect()
}

/// `comp` as the operator wrote it: what [`expand`] added taken out.
pub fn strip(comp: &Component) -> Component {
    let mut out = comp.clone();
    for r in &comp.routes {
        let Some(port) = out.env.remove(&r.env_name()).and_then(|p| p.parse::<u16>().ok()) else { continue };
        let publish = r.publish(port);
        if let Some(i) = out.ports.iter().position(|p| *p == publish) {
            out.ports.remove(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: Option<&str>, port: u16) -> Route {
        Route { name: name.map(Into::into), port, mode: Some(RouteMode::L7), hostname: Some("api.example".into()), bind: None }
    }

    fn comp(routes: Vec<Route>) -> Component {
        Component { name: "api".into(), image: "x:1".into(), ports: vec!["127.0.0.1:9000:9000".into()], routes, ..Default::default() }
    }

    #[test]
    fn expand_and_strip_are_inverse() {
        let c = comp(vec![route(None, 443), route(Some("rest-api"), 8443)]);
        let run = expand(&c, &[("".into(), 12000), ("rest-api".into(), 12001)]);
        assert_eq!(run.ports, vec!["127.0.0.1:9000:9000", "127.0.0.1:12000:12000", "127.0.0.1:12001:12001"]);
        assert_eq!(run.env.get("PORT").map(String::as_str), Some("12000"));
        assert_eq!(run.env.get("PORT_REST_API").map(String::as_str), Some("12001"));
        assert_eq!(assigned(&run), vec![("".to_string(), 12000), ("rest-api".to_string(), 12001)]);
        assert_eq!(strip(&run), c);
        assert_eq!(route(Some("rest"), 8443).show(Some(12001)), "rest 127.0.0.1:12001 -> api.example:8443 (l7)");
        let mut v6 = route(None, 443);
        v6.bind = Some("::1".into());
        assert_eq!(v6.publish(12000), "[::1]:12000:12000");
    }

    #[test]
    fn bad_routes_are_named() {
        let mut c = comp(vec![route(None, 443), route(None, 80), route(Some("a b"), 0)]);
        c.routes[1].hostname = Some("bad_host".into());
        c.env.insert("PORT".into(), "1".into());
        let e = check(&c);
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&"routes[1].name") && fields.contains(&"routes[2].name") && fields.contains(&"routes[2].port"), "{e:?}");
        assert!(fields.contains(&"routes[1].hostname") && fields.contains(&"routes[0]"), "{e:?}");
        assert!(check(&comp(vec![route(None, 443), route(Some("rest"), 8443)])).is_empty());
        let many: Vec<Route> = (0..=MAX_ROUTES).map(|i| route(Some(&format!("r{i}")), 443)).collect();
        assert!(check(&comp(many)).iter().any(|(f, m)| f == "routes" && m.contains("at most")));
    }
}
