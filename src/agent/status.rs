//! Desired vs observed, per component: pure functions behind `mcp status`.

use crate::plan::instance_name;
use crate::proto::{ComponentStatus, ServiceStatus};
use crate::registry::{ComponentRecord, Desired, ServiceRecord};
use crate::runtime::Observed;

/// Why `observed` differs from `want`, if it does.
pub fn drift(want: &ComponentRecord, observed: Option<&Observed>) -> Option<String> {
    match (want.desired, observed) {
        (Desired::Running, None) => Some("missing: desired running, no container".into()),
        (Desired::Stopped, None) => None,
        (desired, Some(o)) => {
            if !o.runs_spec(&want.hash) {
                Some(format!(
                    "spec changed outside mcp: runs {}, registry has {}",
                    o.spec.as_deref().unwrap_or("(no label)"),
                    want.hash
                ))
            } else if desired == Desired::Running && !o.running() {
                Some(format!("not running ({}) but desired running", o.state))
            } else if desired == Desired::Stopped && o.running() {
                Some("running but desired stopped".into())
            } else {
                None
            }
        }
    }
}

/// Status of every service in `records`, plus orphans: objects labelled for a service or
/// component the registry does not know. `now` is unix seconds.
pub fn service_statuses(records: &[ServiceRecord], observed: &[Observed], now: i64) -> Vec<ServiceStatus> {
    let uptime = |o: &Observed| o.started_at.map(|t| (now - t).max(0) as u64);
    let mut out: Vec<ServiceStatus> = records
        .iter()
        .map(|r| {
            let mut components: Vec<ComponentStatus> = r
                .components
                .iter()
                .map(|c| {
                    let name = instance_name(&r.name, &c.spec.name);
                    let adopted = c.hash.starts_with(crate::runtime::ADOPTED_PREFIX);
                    let o = observed.iter().find(|o| o.name == name && o.service == r.name && (o.managed || adopted));
                    ComponentStatus {
                        name: c.spec.name.clone(),
                        desired: c.desired.as_str().into(),
                        spec: c.hash.clone(),
                        observed: o.map(|o| o.state.clone()).unwrap_or_else(|| "missing".into()),
                        observed_spec: o.and_then(|o| o.spec.clone()),
                        uptime_secs: o.and_then(uptime),
                        drift: drift(c, o),
                    }
                })
                .collect();
            for o in observed.iter().filter(|o| o.service == r.name) {
                let known = r.components.iter().any(|c| {
                    instance_name(&r.name, &c.spec.name) == o.name && (o.managed || c.hash.starts_with(crate::runtime::ADOPTED_PREFIX))
                });
                if !known {
                    components.push(orphan(o, uptime(o)));
                }
            }
            ServiceStatus { name: r.name.clone(), active: r.active, components, events: Vec::new() }
        })
        .collect();
    // Whole services the registry does not know.
    let mut unknown: Vec<&str> = observed
        .iter()
        .map(|o| o.service.as_str())
        .filter(|s| !s.is_empty() && !records.iter().any(|r| r.name == *s))
        .collect();
    unknown.sort();
    unknown.dedup();
    for svc in unknown {
        out.push(ServiceStatus {
            name: svc.to_string(),
            active: false,
            components: observed.iter().filter(|o| o.service == svc).map(|o| orphan(o, uptime(o))).collect(),
            events: Vec::new(),
        });
    }
    out
}

fn orphan(o: &Observed, uptime_secs: Option<u64>) -> ComponentStatus {
    ComponentStatus {
        name: if o.component.is_empty() { o.name.clone() } else { o.component.clone() },
        desired: "absent".into(),
        spec: String::new(),
        observed: o.state.clone(),
        observed_spec: o.spec.clone(),
        uptime_secs,
        drift: Some(if o.managed {
            format!("orphan: {} carries mcp labels but is not in the registry", o.name)
        } else {
            format!("unmanaged: {} uses the service's name but was not created by mcp (see `mcp adopt`)", o.name)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Component;

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

    #[test]
    fn drift_kinds() {
        let r = rec(Desired::Running);
        assert!(drift(&r, None).unwrap().starts_with("missing"));
        assert!(drift(&r, Some(&obs(&r.hash, "exited"))).unwrap().starts_with("not running (exited)"));
        assert!(drift(&r, Some(&obs("other", "running"))).unwrap().starts_with("spec changed outside mcp"));
        assert_eq!(drift(&r, Some(&obs(&r.hash, "running"))), None);
        let s = rec(Desired::Stopped);
        assert_eq!(drift(&s, None), None);
        assert_eq!(drift(&s, Some(&obs(&s.hash, "exited"))), None);
        assert_eq!(drift(&s, Some(&obs(&s.hash, "running"))).unwrap(), "running but desired stopped");
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
        let st = service_statuses(&records, &[obs(&r.hash, "running"), stray, other], 100);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].components[0].uptime_secs, Some(10));
        assert_eq!(st[0].components[0].drift, None);
        assert!(st[0].components[1].drift.as_deref().unwrap().starts_with("orphan"));
        assert_eq!(st[1].name, "t");
        assert_eq!(st[1].components[0].desired, "absent");
    }
}
