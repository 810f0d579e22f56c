//! Desired vs observed, per component: pure functions behind `mcp status` and the monitor.

use std::path::PathBuf;

use crate::plan::{binds, instance_name, parse_port, Kind, PortSpec};
use crate::proto::{ComponentStatus, ServiceStatus};
use crate::registry::{ComponentRecord, Desired, RepairCount, ServiceRecord};
use crate::runtime::{select, Observed, Published, ADOPTED_PREFIX};

/// The kinds of drift the agent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// Desired running, nothing there.
    Missing,
    /// There, desired running, not running.
    Stopped,
    /// Running, desired stopped.
    Running,
    /// Runs a spec other than the registry's (changed outside mcp).
    Spec,
    /// Carries mcp labels, unknown to the registry.
    Orphan,
    /// Not made by mcp, but uses a service's name.
    Unmanaged,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::Stopped => "stopped",
            DriftKind::Running => "running",
            DriftKind::Spec => "spec",
            DriftKind::Orphan => "orphan",
            DriftKind::Unmanaged => "unmanaged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub kind: DriftKind,
    pub detail: String,
}

impl Drift {
    fn new(kind: DriftKind, detail: impl Into<String>) -> Self {
        Drift { kind, detail: detail.into() }
    }
}

/// Why `observed` differs from `want`, if it does.
pub fn drift(want: &ComponentRecord, observed: Option<&Observed>) -> Option<Drift> {
    match (want.desired, observed) {
        (Desired::Running, None) => Some(Drift::new(DriftKind::Missing, "missing: desired running, no container")),
        (Desired::Stopped, None) => None,
        (desired, Some(o)) => {
            if !o.runs_spec(&want.hash) {
                Some(Drift::new(
                    DriftKind::Spec,
                    format!(
                        "spec changed outside mcp: runs {}, registry has {}",
                        o.spec.as_deref().unwrap_or("(no label)"),
                        want.hash
                    ),
                ))
            } else if let Some(what) = made_differently(want, o) {
                Some(Drift::new(DriftKind::Spec, format!("spec changed outside mcp: {what}")))
            } else if o.settling() {
                // Stopping or being removed: not drift until it gets where it goes.
                None
            } else if desired == Desired::Running && !o.running() {
                let code = o.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
                Some(Drift::new(DriftKind::Stopped, format!("not running ({}{code}) but desired running", o.state)))
            } else if desired == Desired::Stopped && o.running() {
                Some(Drift::new(DriftKind::Running, "running but desired stopped"))
            } else {
                None
            }
        }
    }
}

/// How a container that carries the right spec label differs from that spec (image,
/// command, volumes, ports), when the listing says what it was made with: the label alone
/// does not prove it, a container can be made by hand with mcp's labels. Adopted containers
/// (no spec of mcp's making) and VMs (the runtime does not say) are not compared.
pub fn made_differently(want: &ComponentRecord, o: &Observed) -> Option<String> {
    let made = o.made.as_ref()?;
    if want.hash.starts_with(ADOPTED_PREFIX) || want.spec.kind != Kind::Container {
        return None;
    }
    let spec = &want.spec;
    let mut diffs = Vec::new();
    if !image_matches(&spec.image, &o.image) {
        diffs.push(format!("image {}, registry has {}", o.image, spec.image));
    }
    if !spec.cmd.is_empty() && made.command != spec.cmd {
        diffs.push(format!("command {:?}, registry has {:?}", made.command, spec.cmd));
    }
    // As paths: `/data/` and `/data` are one mount point.
    let mut want_mounts: Vec<PathBuf> = binds(&spec.volumes).into_iter().map(|b| b.guest).collect();
    let mut seen_mounts: Vec<PathBuf> = made.mounts.iter().map(PathBuf::from).collect();
    want_mounts.sort();
    seen_mounts.sort();
    if want_mounts != seen_mounts {
        diffs.push(format!("volumes at {seen_mounts:?}, registry has {want_mounts:?}"));
    }
    // Host and no network publish nothing (podman ignores -p there).
    let publishes = !matches!(spec.network.as_deref(), Some("host" | "none")) && !spec.network.as_deref().is_some_and(|n| n.starts_with("container:"));
    if publishes && !ports_match(&spec.ports, &made.ports) {
        let seen: Vec<&str> = o.ports.iter().map(String::as_str).collect();
        diffs.push(format!("ports {seen:?}, registry has {:?}", spec.ports));
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

/// Does the image podman names (`docker.io/library/busybox:latest`) match the reference the
/// spec gave (`busybox`)? References by digest or image id are not compared.
pub fn image_matches(want: &str, seen: &str) -> bool {
    let by_id = want.len() >= 12 && want.chars().all(|c| c.is_ascii_hexdigit());
    if seen.is_empty() || want.contains('@') || by_id {
        return true;
    }
    let tagged = |s: &str| if s.rsplit('/').next().is_some_and(|last| last.contains(':')) { s.to_string() } else { format!("{s}:latest") };
    let (want, seen) = (tagged(want), tagged(seen));
    let has_domain = want.split_once('/').is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost");
    seen == want || (!has_domain && seen.ends_with(&format!("/{want}")))
}

/// The spec's port mappings against what is published, one for one.
fn ports_match(want: &[String], seen: &[Published]) -> bool {
    let want: Vec<PortSpec> = want.iter().filter_map(|p| parse_port(p).ok()).collect();
    let mut left: Vec<&Published> = seen.iter().collect();
    for w in &want {
        let found = left.iter().position(|s| {
            s.container_port == w.container_port
                && s.protocol == w.proto
                && w.host_port.is_none_or(|h| h == s.host_port)
                && match w.ip.as_deref() {
                    None => s.host_ip.is_empty() || s.host_ip == "0.0.0.0",
                    Some(ip) => s.host_ip == ip,
                }
        });
        match found {
            Some(i) => {
                left.remove(i);
            }
            None => return false,
        }
    }
    left.is_empty()
}

/// One registered component and what holds its name.
pub struct Slot<'a> {
    pub want: &'a ComponentRecord,
    pub name: String,
    /// The object that is this component (labelled, or adopted by id).
    pub mine: Option<&'a Observed>,
    /// An unmanaged object holding the component's name when `mine` is None.
    pub squatter: Option<&'a Observed>,
}

impl Slot<'_> {
    pub fn drift(&self) -> Option<Drift> {
        match (self.mine, self.squatter) {
            (None, Some(s)) => Some(Drift::new(
                DriftKind::Unmanaged,
                format!(
                    "unmanaged: {} holds the name of component {} but was not created by mcp \
                     (remove it, or take it over with `mcp adopt`)",
                    s.name, self.want.spec.name
                ),
            )),
            (mine, _) => drift(self.want, mine),
        }
    }
}

/// Pair a service's components with the objects `scoped` (the service's objects, see
/// [`select`]) holds; the rest are extras (orphans or unmanaged objects using its name).
pub fn match_service<'a>(r: &'a ServiceRecord, scoped: &'a [Observed]) -> (Vec<Slot<'a>>, Vec<&'a Observed>) {
    let slots: Vec<Slot> = r
        .components
        .iter()
        .map(|c| {
            let name = instance_name(&r.name, &c.spec.name);
            let adopted = c.hash.starts_with(ADOPTED_PREFIX);
            let mine = scoped.iter().find(|o| o.name == name && o.service == r.name && (o.managed || adopted));
            let squatter = if mine.is_none() { scoped.iter().find(|o| o.name == name && !o.managed) } else { None };
            Slot { want: c, name, mine, squatter }
        })
        .collect();
    let claimed = |o: &Observed| {
        slots.iter().any(|s| s.mine.is_some_and(|m| std::ptr::eq(m, o)) || s.squatter.is_some_and(|m| std::ptr::eq(m, o)))
    };
    let extras = scoped.iter().filter(|o| o.service == r.name && !claimed(o)).collect();
    (slots, extras)
}

fn extra_drift(o: &Observed) -> Drift {
    if o.managed && o.name.ends_with(super::reconcile::OLD_SUFFIX) {
        Drift::new(
            DriftKind::Orphan,
            format!(
                "interrupted replace: {} is the version a replace set aside and never finished with; \
                 the next deploy, start or stop of {} (or the daemon) finishes or undoes it",
                o.name, o.service
            ),
        )
    } else if o.managed {
        Drift::new(DriftKind::Orphan, format!("orphan: {} carries mcp labels but is not in the registry", o.name))
    } else {
        Drift::new(
            DriftKind::Unmanaged,
            format!("unmanaged: {} uses the service's name but was not created by mcp (see `mcp adopt`)", o.name),
        )
    }
}

/// Labelled objects of services the registry does not know, by service name.
fn unknown_services<'a>(records: &[ServiceRecord], observed: &'a [Observed]) -> Vec<(&'a str, Vec<&'a Observed>)> {
    let mut names: Vec<&str> = observed
        .iter()
        .filter(|o| o.managed && !o.service.is_empty() && !records.iter().any(|r| r.name == o.service))
        .map(|o| o.service.as_str())
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(|s| (s, observed.iter().filter(|o| o.managed && o.service == s).collect())).collect()
}

/// An object that differs from the registry, as the monitor records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub service: String,
    pub component: String,
    /// The object's name (for a registered component: `<service>-<component>`).
    pub name: String,
    pub drift: Drift,
    /// What is there, if anything.
    pub observed: Option<Observed>,
    /// Whether the component is registered (only those are repaired).
    pub registered: bool,
}

/// Every drift on the node: `all` is a listing of every runtime object.
pub fn findings(records: &[ServiceRecord], all: &[Observed]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in records {
        let scoped = select(all, Some(&r.name));
        let (slots, extras) = match_service(r, &scoped);
        for s in &slots {
            if let Some(d) = s.drift() {
                out.push(Finding {
                    service: r.name.clone(),
                    component: s.want.spec.name.clone(),
                    name: s.name.clone(),
                    drift: d,
                    observed: s.mine.or(s.squatter).cloned(),
                    registered: true,
                });
            }
        }
        for o in extras {
            out.push(extra_finding(o));
        }
    }
    for (_, objects) in unknown_services(records, all) {
        out.extend(objects.into_iter().map(extra_finding));
    }
    out
}

fn extra_finding(o: &Observed) -> Finding {
    Finding {
        service: o.service.clone(),
        component: if o.component.is_empty() { o.name.clone() } else { o.component.clone() },
        name: o.name.clone(),
        drift: extra_drift(o),
        observed: Some(o.clone()),
        registered: false,
    }
}

/// Status of every service in `records`, plus orphans: objects labelled for a service or
/// component the registry does not know. `observed` is what [`select`] gives for the scope;
/// `now` is unix seconds.
pub fn service_statuses(
    records: &[ServiceRecord],
    observed: &[Observed],
    repairs: &dyn Fn(&str) -> Vec<RepairCount>,
    now: i64,
) -> Vec<ServiceStatus> {
    let uptime = |o: &Observed| o.started_at.map(|t| (now - t).max(0) as u64);
    let mut out: Vec<ServiceStatus> = records
        .iter()
        .map(|r| {
            let scoped = select(observed, Some(&r.name));
            let (slots, extras) = match_service(r, &scoped);
            let counts = repairs(&r.name);
            let mut components: Vec<ComponentStatus> = slots
                .iter()
                .map(|s| {
                    let repaired = counts.iter().find(|c| c.component == s.want.spec.name);
                    let d = s.drift();
                    ComponentStatus {
                        name: s.want.spec.name.clone(),
                        desired: s.want.desired.as_str().into(),
                        spec: s.want.hash.clone(),
                        observed: s.mine.map(|o| o.state.clone()).unwrap_or_else(|| "missing".into()),
                        observed_spec: s.mine.and_then(|o| o.spec.clone()),
                        uptime_secs: s.mine.and_then(uptime),
                        drift_kind: d.as_ref().map(|d| d.kind.as_str().to_string()),
                        drift: d.map(|d| d.detail),
                        repairs: repaired.map(|c| c.count).unwrap_or(0),
                        last_repair: repaired.map(|c| c.last),
                        address: s.mine.and_then(|o| o.address.clone()),
                        digest: s.mine.and_then(|o| o.digest.clone()),
                        tag: None,
                        routes: crate::plan::routes::shown(&s.want.spec),
                        health: None,
                        health_detail: None,
                    }
                })
                .collect();
            components.extend(extras.into_iter().map(|o| extra_status(o, uptime(o))));
            ServiceStatus { name: r.name.clone(), active: r.active, components, events: Vec::new() }
        })
        .collect();
    for (svc, objects) in unknown_services(records, observed) {
        out.push(ServiceStatus {
            name: svc.to_string(),
            active: false,
            components: objects.into_iter().map(|o| extra_status(o, uptime(o))).collect(),
            events: Vec::new(),
        });
    }
    out
}

fn extra_status(o: &Observed, uptime_secs: Option<u64>) -> ComponentStatus {
    let d = extra_drift(o);
    ComponentStatus {
        name: if o.component.is_empty() { o.name.clone() } else { o.component.clone() },
        desired: "absent".into(),
        spec: String::new(),
        observed: o.state.clone(),
        observed_spec: o.spec.clone(),
        uptime_secs,
        drift_kind: Some(d.kind.as_str().to_string()),
        drift: Some(d.detail),
        repairs: 0,
        last_repair: None,
        address: o.address.clone(),
        digest: o.digest.clone(),
        tag: None,
        routes: Vec::new(),
        health: None,
        health_detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Component;
    use crate::runtime::Made;

    fn rec(desired: Desired) -> ComponentRecord {
        ComponentRecord::new(Component { name: "a".into(), image: "i".into(), ..Default::default() }, desired)
    }

    fn obs(spec: &str, state: &str) -> Observed {
        Observed {
            id: "x".into(),
            name: "s-a".into(),
            service: "s".into(),
            component: "a".into(),
            spec: Some(spec.into()),
            state: state.into(),
            started_at: Some(90),
            managed: true,
            ..Default::default()
        }
    }

    fn published(ip: &str, host: u16, ctr: u16, proto: &str) -> Published {
        Published { host_ip: ip.into(), host_port: host, container_port: ctr, protocol: proto.into() }
    }

    #[test]
    fn images_match_by_the_name_podman_resolved() {
        assert!(image_matches("busybox", "docker.io/library/busybox:latest"));
        assert!(image_matches("library/busybox:1.36", "docker.io/library/busybox:1.36"));
        assert!(image_matches("localhost/app:1", "localhost/app:1"));
        assert!(image_matches("quay.io/x/y", "quay.io/x/y:latest"));
        assert!(!image_matches("busybox", "docker.io/library/alpine:latest"));
        assert!(!image_matches("busybox:1.36", "docker.io/library/busybox:1.35"));
        assert!(!image_matches("localhost/app:1", "localhost/app:2"));
        assert!(!image_matches("quay.io/x/y", "docker.io/x/y:latest"), "another registry");
        assert!(!image_matches("app", "localhost/myapp:latest"), "a name is matched whole");
        // Not comparable: digests, ids, nothing listed.
        assert!(image_matches("busybox@sha256:abcd", "docker.io/library/busybox:latest"));
        assert!(image_matches("529e402c6cac", "localhost/x:latest"));
        assert!(image_matches("busybox", ""));
    }

    #[test]
    fn a_container_made_by_hand_with_mcp_labels_is_spec_drift() {
        let spec = Component {
            name: "a".into(),
            image: "busybox".into(),
            cmd: vec!["httpd".into(), "-f".into()],
            volumes: vec!["/srv/a:/data/:ro".into()],
            ports: vec!["127.0.0.1:8080:80".into(), "53/udp".into()],
            ..Default::default()
        };
        let r = ComponentRecord::new(spec, Desired::Running);
        let made = Made {
            command: vec!["httpd".into(), "-f".into()],
            mounts: vec!["/data".into()],
            ports: vec![published("127.0.0.1", 8080, 80, "tcp"), published("", 40001, 53, "udp")],
        };
        let mut o = obs(&r.hash, "running");
        o.image = "docker.io/library/busybox:latest".into();
        o.made = Some(made.clone());
        assert_eq!(drift(&r, Some(&o)), None, "as made by mcp");

        let differs = |change: &dyn Fn(&mut Observed)| {
            let mut o = o.clone();
            change(&mut o);
            let d = drift(&r, Some(&o)).expect("drift");
            assert_eq!(d.kind, DriftKind::Spec);
            d.detail
        };
        assert!(differs(&|o| o.image = "docker.io/library/alpine:latest".into()).contains("image docker.io/library/alpine:latest, registry has busybox"));
        assert!(differs(&|o| o.made.as_mut().unwrap().command = vec!["sh".into()]).contains("command [\"sh\"]"));
        assert!(differs(&|o| o.made.as_mut().unwrap().mounts.push("/etc".into())).contains("volumes at"));
        assert!(differs(&|o| o.made.as_mut().unwrap().mounts.clear()).contains("volumes at []"));
        assert!(differs(&|o| o.made.as_mut().unwrap().ports[0].host_port = 9090).contains("ports"));
        assert!(differs(&|o| o.made.as_mut().unwrap().ports[0].host_ip = String::new()).contains("ports"));
        assert!(differs(&|o| o.made.as_mut().unwrap().ports.pop().map(|_| ()).unwrap()).contains("ports"));
        assert!(differs(&|o| o.made.as_mut().unwrap().ports.push(published("", 22, 22, "tcp"))).contains("ports"));
        // Several at once are all named.
        let d = differs(&|o| {
            o.image = "alpine".into();
            o.made.as_mut().unwrap().command.clear();
        });
        assert!(d.contains("image") && d.contains("; command"), "{d}");

        // Not compared: nothing listed (VMs), adopted containers, host networking's ports.
        let mut unknown = o.clone();
        unknown.made = None;
        unknown.image = "alpine".into();
        assert_eq!(made_differently(&r, &unknown), None);
        let mut adopted = r.clone();
        adopted.hash = format!("{ADOPTED_PREFIX}x");
        let mut by_id = o.clone();
        by_id.image = "alpine".into();
        assert_eq!(made_differently(&adopted, &by_id), None);
        let mut host = r.clone();
        host.spec.network = Some("host".into());
        let mut no_ports = o.clone();
        no_ports.made.as_mut().unwrap().ports.clear();
        assert_eq!(made_differently(&host, &no_ports), None);
    }

    #[test]
    fn drift_kinds() {
        let r = rec(Desired::Running);
        let kind = |d: Option<Drift>| d.map(|d| d.kind);
        assert_eq!(kind(drift(&r, None)), Some(DriftKind::Missing));
        let mut exited = obs(&r.hash, "exited");
        exited.exit_code = Some(137);
        let d = drift(&r, Some(&exited)).unwrap();
        assert_eq!((d.kind, d.detail.as_str()), (DriftKind::Stopped, "not running (exited, exit code 137) but desired running"));
        let d = drift(&r, Some(&obs("other", "running"))).unwrap();
        assert_eq!(d.kind, DriftKind::Spec);
        assert!(d.detail.starts_with("spec changed outside mcp"));
        assert_eq!(drift(&r, Some(&obs(&r.hash, "running"))), None);
        let s = rec(Desired::Stopped);
        assert_eq!(drift(&s, None), None);
        assert_eq!(drift(&s, Some(&obs(&s.hash, "exited"))), None);
        assert_eq!(kind(drift(&s, Some(&obs(&s.hash, "running")))), Some(DriftKind::Running));
        // Half-way (a stop or removal in progress) is not yet stopped: no drift until it is.
        assert_eq!(drift(&r, Some(&obs(&r.hash, "stopping"))), None);
        assert_eq!(drift(&r, Some(&obs(&r.hash, "removing"))), None);
        assert_eq!(kind(drift(&r, Some(&obs("other", "stopping")))), Some(DriftKind::Spec), "a wrong spec is drift in any state");
    }

    #[test]
    fn statuses_with_orphans() {
        let r = rec(Desired::Running);
        let records =
            vec![ServiceRecord { name: "s".into(), node: None, active: true, updated_at: 0, components: vec![r.clone()] }];
        let mut stray = obs("h", "running");
        stray.name = "s-b".into();
        stray.component = "b".into();
        let mut other = obs("h", "exited");
        other.service = "t".into();
        other.name = "t-a".into();
        let observed = [obs(&r.hash, "running"), stray, other];
        let st = service_statuses(&records, &observed, &|_| Vec::new(), 100);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].components[0].uptime_secs, Some(10));
        assert_eq!(st[0].components[0].drift, None);
        assert!(st[0].components[1].drift.as_deref().unwrap().starts_with("orphan"));
        assert_eq!(st[1].name, "t");
        assert_eq!(st[1].components[0].desired, "absent");
        // The monitor sees the same two orphans and nothing else.
        let f = findings(&records, &observed);
        let got: Vec<(&str, &str, DriftKind, bool)> =
            f.iter().map(|f| (f.service.as_str(), f.name.as_str(), f.drift.kind, f.registered)).collect();
        assert_eq!(got, vec![("s", "s-b", DriftKind::Orphan, false), ("t", "t-a", DriftKind::Orphan, false)]);
    }

    #[test]
    fn squatter_on_a_component_name_is_unmanaged_drift_not_missing() {
        let r = rec(Desired::Running);
        let records =
            vec![ServiceRecord { name: "s".into(), node: None, active: true, updated_at: 0, components: vec![r.clone()] }];
        let mut squatter = obs("", "running");
        squatter.spec = None;
        squatter.managed = false;
        squatter.service = String::new();
        let f = findings(&records, &[squatter]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].drift.kind, f[0].registered, f[0].component.as_str()), (DriftKind::Unmanaged, true, "a"));
        assert!(findings(&records, &[obs(&r.hash, "running")]).is_empty());
        let missing = findings(&records, &[]);
        assert_eq!(missing[0].drift.kind, DriftKind::Missing);
    }
}
