//! Plan validation. Pure: no I/O. Every problem is reported with the field it is in and what
//! was expected, and all problems are reported at once so one edit can fix them all.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use super::{Component, Kind, Plan, PLAN_VERSION};

/// One problem in one field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// Where: `name`, `components[1].ports[0]`, ...
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Every problem found in one plan, with where the plan came from (a file path or "plan").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct PlanErrors {
    pub origin: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid service definition {} ({} problem{}):",
            self.origin,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

struct Collector {
    errors: Vec<FieldError>,
}

impl Collector {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into() });
    }
}

/// Check a plan; `source` names where it came from in the error.
pub fn validate(plan: &Plan, source: &str) -> Result<(), PlanErrors> {
    let mut c = Collector { errors: Vec::new() };
    if plan.version != PLAN_VERSION {
        c.push(
            "version",
            format!(
                "plan version {} is not supported: this build reads version {PLAN_VERSION}; \
                 use the same release of mcp and mcp-agent (and of the Nix modules)",
                plan.version
            ),
        );
    }
    if let Err(why) = check_name(&plan.name) {
        c.push("name", why);
    }
    if let Some(node) = &plan.node {
        if node.is_empty() || !node.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)) {
            c.push("node", format!("{node:?} is not a node name; expected letters, digits, '.', '_' or '-'"));
        }
    }
    if plan.components.is_empty() {
        c.push("components", "a service needs at least one [[components]] entry");
    }
    let mut names = HashSet::new();
    let mut published = BTreeSet::new();
    for (i, comp) in plan.components.iter().enumerate() {
        let at = format!("components[{i}]");
        if !comp.name.is_empty() && !names.insert(comp.name.as_str()) {
            c.push(format!("{at}.name"), format!("duplicate component name {:?}; names must be unique within a service", comp.name));
        }
        check_component(&mut c, &at, comp, &mut published);
        for (field, message) in super::routes::check(comp) {
            c.push(format!("{at}.{field}"), message);
        }
    }
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(PlanErrors { origin: source.to_string(), errors: c.errors })
    }
}

/// Service and component names: they become container names and label values.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        && name.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name; expected 1-63 of a-z, 0-9, '-', '_', starting with a letter or digit"
        ))
    }
}

fn check_component(c: &mut Collector, at: &str, comp: &Component, published: &mut BTreeSet<(String, u16, String)>) {
    if let Err(why) = check_name(&comp.name) {
        c.push(format!("{at}.name"), why);
    }
    match comp.kind {
        Kind::Container => check_container(c, at, comp),
        Kind::Unikernel => check_unikernel(c, at, comp),
    }
    if let Some(restart) = &comp.restart {
        if let Err(why) = check_restart(restart) {
            c.push(format!("{at}.restart"), why);
        }
    }
    for (j, port) in comp.ports.iter().enumerate() {
        match parse_port(port) {
            Ok(p) => {
                if let Some(host) = p.host_port {
                    let key = (p.ip.clone().unwrap_or_default(), host, p.proto.clone());
                    if !published.insert(key) {
                        c.push(format!("{at}.ports[{j}]"), format!("host port {host}/{} is published twice in this service", p.proto));
                    }
                }
            }
            Err(why) => c.push(format!("{at}.ports[{j}]"), why),
        }
    }
    for (j, vol) in comp.volumes.iter().enumerate() {
        if let Err(why) = check_volume(vol) {
            c.push(format!("{at}.volumes[{j}]"), why);
        }
    }
    for (j, arg) in comp.cmd.iter().enumerate() {
        if arg.contains('\0') {
            c.push(format!("{at}.cmd[{j}]"), "contains a NUL byte");
        }
    }
    for (key, value) in &comp.env {
        let ok = key.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
            && key.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ok {
            c.push(format!("{at}.env.{key}"), "is not an environment variable name; expected [A-Za-z_][A-Za-z0-9_]*");
        }
        if value.contains('\0') || value.contains('\n') {
            // The value may be a secret: never echo it.
            c.push(format!("{at}.env.{key}"), "value contains a NUL byte or a newline; expected a single line");
        }
    }
    if let Some(health) = &comp.health {
        check_health(c, at, comp, health);
    }
    if let Some(t) = comp.stop_timeout {
        if t > 3600 {
            c.push(format!("{at}.stop_timeout"), format!("{t} is too long; expected 0-3600 seconds"));
        }
    }
}

fn check_health(c: &mut Collector, at: &str, comp: &Component, health: &super::Health) {
    let field = |f: &str| if f.is_empty() { format!("{at}.health") } else { format!("{at}.health.{f}") };
    let check = match health.check() {
        Ok(check) => check,
        Err(errors) => return errors.into_iter().for_each(|(f, why)| c.push(field(&f), why)),
    };
    // Probes go to this component's own published ports (or, on the host's network, to this
    // node's loopback; for a VM on an isolated network, to its own address from inside that
    // network): a deploy key must not make the agent reach anything else.
    if let super::Probe::Http { host, port, .. } | super::Probe::Tcp { host, port } = &check.probe {
        let which = if matches!(check.probe, super::Probe::Http { .. }) { "http" } else { "tcp" };
        let isolated_vm = comp.kind == Kind::Unikernel && comp.network.as_deref() != Some("user");
        let why = match host.ip() {
            None if isolated_vm => None,
            None => Some(format!(
                "self:{port}: `self` is the address of a VM on an isolated network; this component is probed at the node's side of a port it publishes"
            )),
            Some(_) if isolated_vm => Some(format!(
                "{host}:{port}: a VM on an isolated network is probed at its own address, from inside that network: write self:{port}"
            )),
            Some(ip) => {
                let ok = if comp.network.as_deref() == Some("host") && comp.kind == Kind::Container {
                    ip.is_loopback()
                } else {
                    comp.ports.iter().filter_map(|p| parse_port(p).ok()).any(|p| {
                        p.host_port == Some(*port)
                            && p.proto == "tcp"
                            && (ip.is_loopback() || p.ip.as_deref().is_some_and(|a| a.parse::<IpAddr>().ok() == Some(ip)))
                    })
                };
                match () {
                    _ if ok => None,
                    _ if comp.network.as_deref() == Some("host") => {
                        Some(format!("{host}:{port}: on the host's network a probe goes to 127.0.0.1 or localhost"))
                    }
                    _ => Some(format!(
                        "{host}:{port} is not a port this component publishes (ports = {:?}); the agent probes the node's side of a published TCP port",
                        comp.ports
                    )),
                }
            }
        };
        if let Some(why) = why {
            c.push(field(which), why);
        }
    }
    if comp.kind == Kind::Unikernel && matches!(check.probe, super::Probe::Cmd(_)) {
        c.push(field("cmd"), "runs inside a container; a unikernel has no exec: probe it with http or tcp");
    }
}

fn check_container(c: &mut Collector, at: &str, comp: &Component) {
    if comp.image.is_empty() {
        c.push(format!("{at}.image"), "missing; expected an image reference such as \"localhost/app:1.0\"");
    } else if comp.image.starts_with('-') || comp.image.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        c.push(format!("{at}.image"), format!("{:?} is not an image reference; expected no spaces and no leading '-'", comp.image));
    }
    if let Some(net) = &comp.network {
        if !is_word(net, "._-") {
            c.push(format!("{at}.network"), format!("{net:?} is not a network name; expected letters, digits, '.', '_' or '-'"));
        }
    }
    if let Some(user) = &comp.user {
        let ok = match user.split_once(':') {
            Some((u, g)) => is_word(u, "._-") && is_word(g, "._-"),
            None => is_word(user, "._-"),
        };
        if !ok {
            c.push(format!("{at}.user"), format!("{user:?} is not a user; expected \"UID\", \"UID:GID\" or \"name[:group]\""));
        }
    }
    if let Some(d) = comp.image.split_once('@').map(|(_, d)| d) {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.chars().all(|ch| ch.is_ascii_hexdigit()) {
            c.push(format!("{at}.image"), format!("{:?}: a digest is sha256: and 64 hex digits", comp.image));
        }
    }
    for (field, set) in [
        ("program", comp.program.is_some()),
        ("kernel", comp.kernel.is_some()),
        ("initrd", comp.initrd.is_some()),
        ("append", comp.append.is_some()),
        ("memory", comp.memory.is_some()),
        ("cpus", comp.cpus.is_some()),
    ] {
        if set {
            c.push(format!("{at}.{field}"), "only for unikernel components; set kind = \"unikernel\" or remove it");
        }
    }
}

/// A unikernel, in one of three forms: a `program` (an ELF mcp builds a Nanos image from), a
/// disk `image` (prebuilt), or a `kernel` (+ `initrd`, `append`).
fn check_unikernel(c: &mut Collector, at: &str, comp: &Component) {
    let path_field = |c: &mut Collector, field: &str, value: &str| {
        if !value.starts_with('/') || value.split('/').any(|seg| seg == "..") || value.chars().any(|ch| ch.is_control() || ch == ',') {
            c.push(format!("{at}.{field}"), format!("{value:?} is not a usable path; expected an absolute path on the node without '..' or ','"));
        }
    };
    if comp.pull.is_some() {
        c.push(format!("{at}.pull"), "only for containers (a unikernel's image is a file on the node)");
    }
    let forms: Vec<&str> = [("program", comp.program.is_some()), ("image", !comp.image.is_empty()), ("kernel", comp.kernel.is_some())]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
    if forms.len() > 1 {
        c.push(
            format!("{at}.{}", forms[1]),
            format!(
                "set together with {}; expected either program (an ELF to run on Nanos), image (a disk image) or kernel (+ initrd, append)",
                forms[0]
            ),
        );
    }
    let only_with_kernel = |c: &mut Collector, why: &str| {
        for (field, set) in [("initrd", comp.initrd.is_some()), ("append", comp.append.is_some())] {
            if set {
                c.push(format!("{at}.{field}"), format!("only with kernel; {why}"));
            }
        }
    };
    match forms.first().copied() {
        Some("kernel") => {
            path_field(c, "kernel", comp.kernel.as_deref().unwrap_or_default());
            if let Some(initrd) = &comp.initrd {
                path_field(c, "initrd", initrd);
            }
            if let Some(append) = &comp.append {
                if append.chars().any(|ch| ch.is_control()) {
                    c.push(format!("{at}.append"), "contains control characters; expected one line");
                }
            }
        }
        Some("program") => {
            let program = comp.program.as_deref().unwrap_or_default();
            path_field(c, "program", program);
            only_with_kernel(c, "the program form boots a Nanos image mcp builds");
            // The program goes into the guest at its own path; a volume there would hide it.
            for (j, bind) in binds(&comp.volumes).iter().enumerate() {
                let p = std::path::Path::new(program);
                if p.starts_with(&bind.guest) || bind.guest.starts_with(p) {
                    c.push(
                        format!("{at}.volumes[{j}]"),
                        format!(
                            "guest path {} collides with the program {program}, which goes into the guest at its own path; mount the volume elsewhere",
                            bind.guest.display()
                        ),
                    );
                }
            }
        }
        Some(_) => {
            path_field(c, "image", &comp.image);
            only_with_kernel(c, "a disk image carries its own boot setup");
            // Volumes are baked by rebuilding the image from the program in cmd[0].
            if !comp.volumes.is_empty() && !comp.cmd.first().is_some_and(|p| p.starts_with('/')) {
                c.push(
                    format!("{at}.cmd"),
                    "a disk-image unikernel with volumes is rebuilt from its program: expected cmd = [\"/path/to/program\", args...] (or use program = ...)",
                );
            }
        }
        None => c.push(
            format!("{at}.image"),
            "missing; a unikernel needs program = \"/path/to/elf\", image = \"/path/to/disk.img\" or kernel = \"/path/to/kernel\"",
        ),
    }
    if let Some(net) = &comp.network {
        if net != "user" && check_name(net).is_err() {
            c.push(format!("{at}.network"), format!("{net:?} is not a network; expected \"user\" (QEMU user-mode NAT) or a bridge name (a-z, 0-9, '-', '_')"));
        }
    }
    if comp.user.is_some() {
        c.push(format!("{at}.user"), "not for unikernel components (a VM has no host user to run as)");
    }
    if let Some(m) = &comp.memory {
        let digits = m.strip_suffix(['K', 'M', 'G']).unwrap_or(m);
        if digits.is_empty() || !digits.chars().all(|ch| ch.is_ascii_digit()) || digits.len() > 9 || digits.chars().all(|ch| ch == '0') {
            c.push(format!("{at}.memory"), format!("{m:?} is not a memory size; expected a number with an optional K, M or G suffix, e.g. \"256M\""));
        }
    }
    if let Some(n) = comp.cpus {
        if n == 0 || n > 64 {
            c.push(format!("{at}.cpus"), format!("{n} is out of range; expected 1-64"));
        }
    }
    for (j, port) in comp.ports.iter().enumerate() {
        if comp.network.as_deref() != Some("user") {
            c.push(format!("{at}.ports[{j}]"), "ports are forwarded by QEMU user-mode networking; set network = \"user\"");
        } else if parse_port(port).is_ok_and(|p| p.host_port.is_none() || p.proto == "sctp") {
            c.push(format!("{at}.ports[{j}]"), format!("{port:?} needs a host port and tcp or udp for a VM, e.g. \"127.0.0.1:8080:80\""));
        }
    }
    if comp.kernel.is_some() {
        // The command becomes init's arguments on the kernel command line.
        for (j, arg) in comp.cmd.iter().enumerate() {
            if arg.is_empty() || arg.chars().any(|ch| ch.is_whitespace() || ch == '"') {
                c.push(format!("{at}.cmd[{j}]"), format!("{arg:?} cannot be passed on a kernel command line; expected no spaces or quotes"));
            }
        }
    }
}

fn is_word(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
        && s.chars().all(|ch| ch.is_ascii_alphanumeric() || extra.contains(ch))
}

fn check_restart(s: &str) -> Result<(), String> {
    let ok = match s {
        "no" | "always" | "unless-stopped" | "on-failure" => true,
        _ => s
            .strip_prefix("on-failure:")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|ch| ch.is_ascii_digit()) && n.len() <= 5),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a restart policy; expected \"no\", \"on-failure\", \"on-failure:N\", \"always\" or \"unless-stopped\""))
    }
}

/// A parsed `[IP:][HOST:]CONTAINER[/PROTO]` port mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: String,
}

const PORT_EXPECTED: &str = "expected [IP:][HOST:]CONTAINER[/tcp|udp], e.g. \"127.0.0.1:8080:80\"";

pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let bad = |why: &str| format!("{s:?} is not a port mapping ({why}); {PORT_EXPECTED}");
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, p @ ("tcp" | "udp" | "sctp"))) => (spec, p.to_string()),
        Some(_) => return Err(bad("unknown protocol")),
        None => (s, "tcp".to_string()),
    };
    let (ip, rest) = if let Some(inner) = spec.strip_prefix('[') {
        let (ip, rest) = inner.split_once("]:").ok_or_else(|| bad("unclosed IPv6 address"))?;
        (Some(ip.to_string()), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0].to_string()), &spec[parts[0].len() + 1..]),
            _ => return Err(bad("too many ':'")),
        }
    };
    if let Some(ip) = &ip {
        if ip.parse::<IpAddr>().is_err() {
            return Err(bad(&format!("{ip:?} is not an IP address")));
        }
    }
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|ch| ch.is_ascii_digit()) => Ok(n),
            _ => Err(bad(&format!("{p:?} is not a port number 1-65535"))),
        }
    };
    let (host_port, container_port) = match rest.split_once(':') {
        Some(("", c)) => (None, port(c)?),
        Some((h, c)) => (Some(port(h)?), port(c)?),
        None if ip.is_some() => return Err(bad("missing container port")),
        None => (None, port(rest)?),
    };
    Ok(PortSpec { ip, host_port, container_port, proto })
}

const VOLUME_OPTIONS: &[&str] = &[
    "ro", "rw", "z", "Z", "U", "O", "shared", "slave", "private", "rshared", "rslave", "rprivate", "nocopy",
    "noexec", "exec", "nosuid", "suid", "nodev", "dev",
];

/// `HOST:CONTAINER[:OPTIONS]` with both paths absolute and free of `..`.
/// A volume's two sides: host dir -> path inside the container or VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    pub guest: PathBuf,
}

/// `HOST:GUEST[:opts]` volumes (the form [`check_volume`] accepts).
pub fn binds(volumes: &[String]) -> Vec<Bind> {
    volumes
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some(Bind { host: PathBuf::from(parts.next()?), guest: PathBuf::from(parts.next()?) })
        })
        .collect()
}

pub fn check_volume(s: &str) -> Result<(), String> {
    let expected = "expected /HOST/PATH:/CONTAINER/PATH[:ro|rw|z|Z...], both absolute";
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(format!("{s:?} is not a volume; {expected}"));
    }
    for (what, path) in [("host path", parts[0]), ("container path", parts[1])] {
        if !path.starts_with('/') {
            return Err(format!("{what} {path:?} is not absolute; {expected}"));
        }
        if path.split('/').any(|seg| seg == "..") {
            return Err(format!("{what} {path:?} contains '..'; {expected}"));
        }
    }
    if let Some(opts) = parts.get(2) {
        for opt in opts.split(',') {
            if !VOLUME_OPTIONS.contains(&opt) {
                return Err(format!("unknown volume option {opt:?}; expected one of {}", VOLUME_OPTIONS.join(", ")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            version: PLAN_VERSION,
            name: "svc".into(),
            node: None,
            active: true,
            components: vec![Component { name: "web".into(), image: "localhost/x:1".into(), ..Default::default() }],
        }
    }

    fn first_error(p: &Plan) -> String {
        let e = validate(p, "t.toml").unwrap_err();
        format!("{}: {}", e.errors[0].field, e.errors[0].message)
    }

    #[test]
    fn probes_go_only_to_published_ports_or_loopback_on_the_host_network() {
        let mut p = plan();
        p.components[0].ports = vec!["127.0.0.1:8080:80".into(), "9000:90".into(), "10.0.0.5:9100:91".into(), "9200:92/udp".into()];
        let probe = |p: &mut Plan, url: &str| {
            p.components[0].health = Some(crate::plan::Health { http: Some(url.into()), ..Default::default() });
            validate(p, "t").err().map(|e| e.errors[0].field.clone())
        };
        for ok in ["http://127.0.0.1:8080/", "http://localhost:8080/", "http://[::1]:9000/", "http://10.0.0.5:9100/"] {
            assert_eq!(probe(&mut p, ok), None, "{ok}");
        }
        for bad in ["http://127.0.0.1:22/", "http://10.0.0.6:9100/", "http://10.0.0.5:8080/", "http://127.0.0.1:9200/"] {
            assert_eq!(probe(&mut p, bad).as_deref(), Some("components[0].health.http"), "{bad}");
        }
        assert!(probe(&mut p, "http://self:8080/").is_some(), "self is for isolated VMs");
        p.components[0].network = Some("host".into());
        assert_eq!(probe(&mut p, "http://127.0.0.1:22/"), None);
        assert!(probe(&mut p, "http://10.0.0.5:9100/").is_some());
        // A VM on an isolated network: only its own address, from inside that network.
        let c = &mut p.components[0];
        (c.kind, c.image, c.kernel, c.ports, c.network) = (Kind::Unikernel, String::new(), Some("/k".into()), vec![], Some("backend".into()));
        assert_eq!(probe(&mut p, "http://self:8080/healthz"), None);
        assert_eq!(probe(&mut p, "http://127.0.0.1:8080/").as_deref(), Some("components[0].health.http"));
        assert!(first_error(&p).contains("write self:8080"), "{}", first_error(&p));
        p.components[0].network = Some("user".into());
        assert!(probe(&mut p, "http://self:8080/").is_some());
        assert!(first_error(&p).contains("`self` is the address of a VM on an isolated network"), "{}", first_error(&p));
    }

    #[test]
    fn valid_plan_passes() {
        let mut p = plan();
        p.components[0].ports = vec!["127.0.0.1:8080:80".into(), "9000/udp".into(), "[::1]:8443:443".into()];
        p.components[0].volumes = vec!["/srv/svc:/srv/svc:ro,Z".into()];
        p.components[0].restart = Some("on-failure:3".into());
        p.components[0].user = Some("0:0".into());
        validate(&p, "t").unwrap();
    }

    fn vm() -> Component {
        Component {
            name: "vm".into(),
            kind: Kind::Unikernel,
            kernel: Some("/boot/vmlinuz".into()),
            initrd: Some("/boot/initrd.img".into()),
            append: Some("console=ttyS0 quiet".into()),
            network: Some("user".into()),
            ports: vec!["127.0.0.1:18080:8080".into()],
            volumes: vec!["/srv/www:/srv/www".into()],
            memory: Some("256M".into()),
            cpus: Some(1),
            restart: Some("always".into()),
            ..Default::default()
        }
    }

    #[test]
    fn unikernels_kernel_and_image_forms() {
        let mut p = plan();
        p.components = vec![vm()];
        validate(&p, "t").unwrap();
        let image = Component { name: "n".into(), kind: Kind::Unikernel, image: "/nix/store/x-app.img".into(), ..Default::default() };
        p.components = vec![image];
        validate(&p, "t").unwrap();

        let problems = |c: Component| -> Vec<String> {
            let mut p = plan();
            p.components = vec![c];
            validate(&p, "t").unwrap_err().errors.into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect()
        };
        let mut both = vm();
        both.image = "/x.img".into();
        assert_eq!(problems(both)[0], "components[0].kernel: set together with image; expected either program (an ELF to run on Nanos), image (a disk image) or kernel (+ initrd, append)");
        let neither = Component { name: "n".into(), kind: Kind::Unikernel, ..Default::default() };
        assert!(problems(neither)[0].starts_with("components[0].image: missing"));
        let mut bad = vm();
        bad.kernel = Some("vmlinuz".into());
        bad.memory = Some("lots".into());
        bad.cpus = Some(0);
        bad.user = Some("0:0".into());
        bad.network = None;
        bad.cmd = vec!["two words".into()];
        let got = problems(bad);
        for field in ["kernel", "memory", "cpus", "user", "ports[0]", "cmd[0]"] {
            assert!(got.iter().any(|e| e.starts_with(&format!("components[0].{field}:"))), "{field}: {got:?}");
        }
        let mut no_host_port = vm();
        no_host_port.ports = vec!["8080".into()];
        assert!(problems(no_host_port)[0].contains("needs a host port"));
        // The program form: a path, no initrd/append, no volume over the program.
        let prog = Component {
            name: "app".into(),
            kind: Kind::Unikernel,
            program: Some("/srv/bin/mcat".into()),
            cmd: vec!["--config".into(), "/srv/mcat/mcat.toml".into(), "a b (c)".into()],
            volumes: vec!["/srv/mcat:/srv/mcat".into()],
            network: Some("user".into()),
            ports: vec!["127.0.0.1:9443:443".into()],
            ..Default::default()
        };
        let mut p = plan();
        p.components = vec![prog.clone()];
        validate(&p, "t").unwrap();
        let mut over = prog.clone();
        over.volumes = vec!["/srv/mcat:/srv/mcat".into(), "/data/bin:/srv/bin".into(), "/data/x:/srv/bin/mcat/x".into()];
        over.initrd = Some("/i".into());
        let got = problems(over);
        assert!(got.contains(&"components[0].volumes[1]: guest path /srv/bin collides with the program /srv/bin/mcat, which goes into the guest at its own path; mount the volume elsewhere".to_string()), "{got:?}");
        assert!(got.iter().any(|e| e.starts_with("components[0].volumes[2]: guest path /srv/bin/mcat/x collides")), "{got:?}");
        assert!(got.iter().any(|e| e.starts_with("components[0].initrd: only with kernel")), "{got:?}");
        let mut relative = prog.clone();
        relative.program = Some("bin/mcat".into());
        assert!(problems(relative)[0].starts_with("components[0].program: \"bin/mcat\" is not a usable path"));
        let mut two = prog;
        two.kernel = Some("/k".into());
        assert!(problems(two)[0].starts_with("components[0].kernel: set together with program"));
        // Unikernel fields on a container are refused too.
        let mut ctr = plan().components[0].clone();
        ctr.program = Some("/bin/x".into());
        assert!(problems(ctr.clone())[0].starts_with("components[0].program: only for unikernel"));
        ctr.program = None;
        ctr.memory = Some("1G".into());
        assert!(problems(ctr)[0].starts_with("components[0].memory: only for unikernel"));
    }

    #[test]
    fn errors_name_field_and_expectation() {
        let mut p = plan();
        p.components[0].ports = vec!["80:abc".into()];
        let e = first_error(&p);
        assert!(e.starts_with("components[0].ports[0]:"), "{e}");
        assert!(e.contains("expected [IP:][HOST:]CONTAINER"), "{e}");
    }

    #[test]
    fn all_errors_reported_and_display_names_source() {
        let mut p = plan();
        p.name = "Bad Name".into();
        p.components[0].restart = Some("sometimes".into());
        let e = validate(&p, "services/x.toml").unwrap_err();
        assert_eq!(e.errors.len(), 2);
        let text = e.to_string();
        assert!(text.starts_with("invalid service definition services/x.toml (2 problems):"), "{text}");
    }

    #[test]
    fn ports() {
        let p = parse_port("127.0.0.1::80/udp").unwrap();
        assert_eq!((p.ip.as_deref(), p.host_port, p.container_port, p.proto.as_str()), (Some("127.0.0.1"), None, 80, "udp"));
        for bad in ["", "0", "70000", "1.2.3:80:80", "a:b:c:d", "80/icmp", "[::1:80:80", "127.0.0.1:80", "-1"] {
            assert!(parse_port(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn duplicate_host_port() {
        let mut p = plan();
        p.components[0].ports = vec!["8080:80".into()];
        p.components.push(Component { name: "b".into(), image: "i".into(), ports: vec!["8080:81".into()], ..Default::default() });
        assert!(first_error(&p).contains("published twice"));
    }

    #[test]
    fn volumes() {
        assert!(check_volume("/a:/b").is_ok());
        assert!(check_volume("rel:/b").unwrap_err().contains("not absolute"));
        assert!(check_volume("/a:rel").unwrap_err().contains("not absolute"));
        assert!(check_volume("/a/../etc:/b").unwrap_err().contains("'..'"));
        assert!(check_volume("/a:/b:bogus").unwrap_err().contains("unknown volume option"));
        assert!(check_volume("/a").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("my-svc_1").is_ok());
        for bad in ["", "-a", "A", "a.b", "a/b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_and_empty_components() {
        let mut p = plan();
        p.version = 2;
        p.components.clear();
        let e = validate(&p, "t").unwrap_err();
        assert_eq!(e.errors[0].field, "version");
        assert!(e.errors[0].message.contains("reads version 1"));
        assert_eq!(e.errors[1].field, "components");
    }

    #[test]
    fn env_secret_value_not_echoed() {
        let mut p = plan();
        p.components[0].env.insert("TOKEN".into(), "s3cr3t\0".into());
        let e = validate(&p, "t").unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
