//! Reconcile: a pure function from (desired, observed) to the ordered actions that make the node
//! match. No I/O here; the agent's executor carries the actions out.

use super::status::made_differently;
use crate::plan::instance_name;
use crate::registry::{ComponentRecord, Desired};
use crate::runtime::Observed;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing runs for this component: create and start it.
    Create { component: String },
    /// It runs with another spec: replace it (the old one is kept until the new one is up).
    Replace { component: String, old_id: String, old_running: bool },
    /// Same spec, not running, should run.
    Start { component: String, id: String },
    /// Restart a running component in place (only from `restart`, never from reconcile).
    Restart { component: String, id: String },
    /// Should not run but does.
    Stop { component: String, id: String },
    /// Not (or no longer) in the definition, or a stray duplicate: remove it.
    Remove { component: String, id: String },
    /// Already as desired.
    Keep { component: String },
}

impl Action {
    pub fn component(&self) -> &str {
        match self {
            Action::Create { component }
            | Action::Replace { component, .. }
            | Action::Start { component, .. }
            | Action::Restart { component, .. }
            | Action::Stop { component, .. }
            | Action::Remove { component, .. }
            | Action::Keep { component } => component,
        }
    }

    /// Does this action change anything on the node?
    pub fn mutates(&self) -> bool {
        !matches!(self, Action::Keep { .. })
    }
}

/// The name a replaced instance carries while its replacement proves itself: the rename is
/// the replace's intent, written in the runtime itself before anything else changes.
pub fn old_name(service: &str, component: &str) -> String {
    format!("{}{OLD_SUFFIX}", instance_name(service, component))
}

pub const OLD_SUFFIX: &str = ".mcp-old";

/// How to finish a replace that was interrupted (the agent killed between its rename and the
/// registry's commit, or before the old instance was removed). The registry is the commit
/// point: what it holds is what was deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The replace never committed: the old instance is what the registry holds. Remove the
    /// new one (if any), give the old one its name back, and start it if it should run.
    Undo { component: String, old_id: String, new_id: Option<String>, start: bool },
    /// The replace committed (or the leftover runs nothing registered): remove the leftover.
    Finish { component: String, old_id: String },
}

/// What to do about interrupted replaces of `service`, from the registry's record of it and
/// what the runtime has.
pub fn interrupted(service: &str, registered: &[ComponentRecord], observed: &[Observed]) -> Vec<Recovery> {
    let mut out = Vec::new();
    let prefix = format!("{service}-");
    for old in observed.iter() {
        // The component from the name: an adopted (unlabelled) one has no label to say it.
        let Some(component) = old.name.strip_prefix(&prefix).and_then(|n| n.strip_suffix(OLD_SUFFIX)) else { continue };
        let want = registered.iter().find(|c| c.spec.name == component);
        let current = observed.iter().find(|o| o.name == instance_name(service, component));
        let component = component.to_string();
        match want {
            Some(w) if old.runs_spec(&w.hash) && !current.is_some_and(|c| c.runs_spec(&w.hash)) => out.push(Recovery::Undo {
                component,
                old_id: old.id.clone(),
                new_id: current.map(|c| c.id.clone()),
                start: w.desired == Desired::Running,
            }),
            // Only what mcp made is removed; a stranger under such a name is left alone.
            _ if old.managed => out.push(Recovery::Finish { component, old_id: old.id.clone() }),
            _ => {}
        }
    }
    out
}

/// Unlabelled objects the registry adopted earlier are mcp's: mark them managed, so that a
/// new definition replaces them (and a removed one removes them) like labelled ones.
pub fn claim_adopted(observed: &mut [Observed], registered: &[ComponentRecord]) {
    for o in observed.iter_mut().filter(|o| !o.managed) {
        if registered.iter().any(|c| c.hash.starts_with(crate::runtime::ADOPTED_PREFIX) && o.runs_spec(&c.hash)) {
            o.managed = true;
        }
    }
}

/// Decide what to do for `service`.
///
/// - `desired`: the components the service should have, in definition order.
/// - `observed`: what the runtime has with this service's labels.
/// - `only`: restrict to one component (its stray duplicates included); nothing else is touched,
///   and components outside the definition are not removed.
///
/// Order: creations, replacements and starts in definition order, then stops, then removals,
/// so that nothing is taken away before what replaces it is up.
pub fn reconcile(service: &str, desired: &[ComponentRecord], observed: &[Observed], only: Option<&str>) -> Vec<Action> {
    let in_scope = |name: &str| only.is_none_or(|o| o == name);
    let mut ups = Vec::new();
    let mut stops = Vec::new();
    let mut removes = Vec::new();

    for want in desired.iter().filter(|c| in_scope(&c.spec.name)) {
        let name = want.spec.name.clone();
        let primary_name = instance_name(service, &name);
        // Unmanaged objects under the name count only for an adopted component.
        let adopted = want.hash.starts_with(crate::runtime::ADOPTED_PREFIX);
        let mine: Vec<&Observed> = observed.iter().filter(|o| o.component == name && (o.managed || adopted)).collect();
        // The one under the canonical name is the component; any other is a leftover.
        let current = mine.iter().find(|o| o.name == primary_name).copied();
        for stray in mine.iter().filter(|o| Some(o.id.as_str()) != current.map(|c| c.id.as_str())) {
            removes.push(Action::Remove { component: name.clone(), id: stray.id.clone() });
        }
        let action = match (want.desired, current) {
            (Desired::Running, None) => Action::Create { component: name },
            // Another spec, or the right label on a container made otherwise (by hand).
            (Desired::Running, Some(cur)) if !cur.runs_spec(&want.hash) || made_differently(want, cur).is_some() => {
                Action::Replace { component: name, old_id: cur.id.clone(), old_running: cur.running() }
            }
            (Desired::Running, Some(cur)) if !cur.running() => Action::Start { component: name, id: cur.id.clone() },
            (Desired::Running, Some(_)) => Action::Keep { component: name },
            (Desired::Stopped, Some(cur)) if cur.running() => Action::Stop { component: name, id: cur.id.clone() },
            (Desired::Stopped, _) => Action::Keep { component: name },
        };
        match action {
            Action::Stop { .. } => stops.push(action),
            _ => ups.push(action),
        }
    }

    if only.is_none() {
        for o in observed.iter().filter(|o| o.managed) {
            if !desired.iter().any(|d| d.spec.name == o.component) {
                removes.push(Action::Remove { component: o.component.clone(), id: o.id.clone() });
            }
        }
    }

    ups.extend(stops);
    ups.extend(removes);
    ups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Component;

    fn want(name: &str, image: &str, desired: Desired) -> ComponentRecord {
        ComponentRecord::new(Component { name: name.into(), image: image.into(), ..Default::default() }, desired)
    }

    fn seen(name: &str, spec: &str, state: &str) -> Observed {
        Observed {
            id: format!("id-{name}-{spec}"),
            name: format!("svc-{name}"),
            service: "svc".into(),
            component: name.into(),
            spec: Some(spec.into()),
            state: state.into(),
            managed: true,
            ..Default::default()
        }
    }

    #[test]
    fn missing_is_created() {
        let d = [want("a", "i", Desired::Running)];
        assert_eq!(reconcile("svc", &d, &[], None), vec![Action::Create { component: "a".into() }]);
    }

    #[test]
    fn the_right_label_on_a_container_made_otherwise_is_replaced() {
        let d = [want("a", "i", Desired::Running)];
        let mut forged = seen("a", &d[0].hash, "running");
        forged.image = "localhost/other:latest".into();
        forged.made = Some(crate::runtime::Made::default());
        assert_eq!(
            reconcile("svc", &d, &[forged.clone()], None),
            vec![Action::Replace { component: "a".into(), old_id: forged.id.clone(), old_running: true }]
        );
        forged.image = "localhost/i:latest".into();
        assert_eq!(reconcile("svc", &d, &[forged], None), vec![Action::Keep { component: "a".into() }]);
    }

    #[test]
    fn unchanged_running_is_kept() {
        let d = [want("a", "i", Desired::Running)];
        let o = [seen("a", &d[0].hash, "running")];
        let acts = reconcile("svc", &d, &o, None);
        assert_eq!(acts, vec![Action::Keep { component: "a".into() }]);
        assert!(!acts.iter().any(Action::mutates));
    }

    #[test]
    fn changed_spec_is_replaced_remembering_old_state() {
        let d = [want("a", "i2", Desired::Running)];
        let o = [seen("a", "old", "exited")];
        assert_eq!(
            reconcile("svc", &d, &o, None),
            vec![Action::Replace { component: "a".into(), old_id: "id-a-old".into(), old_running: false }]
        );
    }

    #[test]
    fn unlabelled_spec_counts_as_changed() {
        let d = [want("a", "i", Desired::Running)];
        let mut o = seen("a", "x", "running");
        o.spec = None;
        assert!(matches!(reconcile("svc", &d, &[o], None)[0], Action::Replace { old_running: true, .. }));
    }

    #[test]
    fn adopted_container_matches_by_id_until_redefined() {
        let mut d = [want("a", "i", Desired::Running)];
        d[0].hash = "adopted:0123456789ab".into();
        let mut o = seen("a", "x", "exited");
        o.spec = None;
        o.managed = false;
        o.id = "0123456789abcdef".into();
        assert_eq!(reconcile("svc", &d, &[o.clone()], None), vec![Action::Start { component: "a".into(), id: o.id.clone() }]);
        // Redefined (a real spec hash): an unmanaged container is never touched...
        let fresh = [want("a", "i", Desired::Running)];
        assert_eq!(reconcile("svc", &fresh, &[o.clone()], None), vec![Action::Create { component: "a".into() }]);
        // ...nor removed when it is not in the definition.
        assert_eq!(reconcile("svc", &[], &[o], None), vec![]);
    }

    #[test]
    fn claimed_adopted_container_is_replaced_by_a_definition() {
        let mut adopted = want("a", "i", Desired::Running);
        adopted.hash = "adopted:0123456789ab".into();
        let mut o = seen("a", "x", "running");
        o.spec = None;
        o.managed = false;
        o.id = "0123456789abcdef".into();
        let mut observed = vec![o];
        claim_adopted(&mut observed, &[adopted]);
        assert!(observed[0].managed);
        let fresh = [want("a", "i", Desired::Running)];
        assert!(matches!(reconcile("svc", &fresh, &observed, None)[0], Action::Replace { old_running: true, .. }));
    }

    #[test]
    fn same_spec_stopped_is_started() {
        let d = [want("a", "i", Desired::Running)];
        let o = [seen("a", &d[0].hash, "exited")];
        assert_eq!(reconcile("svc", &d, &o, None), vec![Action::Start { component: "a".into(), id: o[0].id.clone() }]);
    }

    #[test]
    fn desired_stopped_running_is_stopped() {
        let d = [want("a", "i", Desired::Stopped)];
        let o = [seen("a", "any", "running")];
        assert_eq!(reconcile("svc", &d, &o, None), vec![Action::Stop { component: "a".into(), id: o[0].id.clone() }]);
    }

    #[test]
    fn desired_stopped_and_absent_or_stopped_is_kept() {
        let d = [want("a", "i", Desired::Stopped), want("b", "i", Desired::Stopped)];
        let o = [seen("b", "any", "exited")];
        assert_eq!(
            reconcile("svc", &d, &o, None),
            vec![Action::Keep { component: "a".into() }, Action::Keep { component: "b".into() }]
        );
    }

    #[test]
    fn removed_from_definition_is_removed_last() {
        let d = [want("a", "i", Desired::Running)];
        let o = [seen("gone", "h", "running")];
        assert_eq!(
            reconcile("svc", &d, &o, None),
            vec![Action::Create { component: "a".into() }, Action::Remove { component: "gone".into(), id: o[0].id.clone() }]
        );
    }

    #[test]
    fn scope_touches_only_that_component() {
        let d = [want("a", "i", Desired::Running), want("b", "i", Desired::Running)];
        let o = [seen("gone", "h", "running")];
        assert_eq!(reconcile("svc", &d, &o, Some("b")), vec![Action::Create { component: "b".into() }]);
    }

    #[test]
    fn interrupted_replaces_are_undone_or_finished_by_what_the_registry_holds() {
        let old_spec = want("a", "old", Desired::Running);
        let mut old = seen("a", &old_spec.hash, "exited");
        old.name = "svc-a.mcp-old".into();
        old.id = "old".into();
        let mut new = seen("a", "new-hash", "running");
        new.id = "new".into();
        // Killed in the settle window: the registry still holds the old spec.
        assert_eq!(
            interrupted("svc", std::slice::from_ref(&old_spec), &[new.clone(), old.clone()]),
            vec![Recovery::Undo { component: "a".into(), old_id: "old".into(), new_id: Some("new".into()), start: true }]
        );
        // Killed between the rename and the create: nothing under the name.
        let stopped = want("a", "old", Desired::Stopped);
        assert_eq!(
            interrupted("svc", &[stopped], std::slice::from_ref(&old)),
            vec![Recovery::Undo { component: "a".into(), old_id: "old".into(), new_id: None, start: false }]
        );
        // Killed after the commit, before the old one was removed.
        let new_spec = ComponentRecord { hash: "new-hash".into(), ..want("a", "new", Desired::Running) };
        assert_eq!(
            interrupted("svc", &[new_spec], &[new.clone(), old.clone()]),
            vec![Recovery::Finish { component: "a".into(), old_id: "old".into() }]
        );
        // No leftover, nothing to do; an unmanaged stranger under such a name is left alone.
        assert_eq!(interrupted("svc", std::slice::from_ref(&old_spec), std::slice::from_ref(&new)), vec![]);
        let mut stranger = old.clone();
        stranger.managed = false;
        stranger.spec = None;
        assert_eq!(interrupted("svc", &[old_spec], &[new, stranger]), vec![]);
    }

    #[test]
    fn stray_duplicate_is_removed() {
        let d = [want("a", "i", Desired::Running)];
        let mut stray = seen("a", &d[0].hash, "exited");
        stray.name = "svc-a.mcp-old".into();
        stray.id = "stray".into();
        let o = [seen("a", &d[0].hash, "running"), stray];
        assert_eq!(
            reconcile("svc", &d, &o, None),
            vec![Action::Keep { component: "a".into() }, Action::Remove { component: "a".into(), id: "stray".into() }]
        );
    }

    #[test]
    fn order_is_ups_then_stops_then_removes() {
        let d = [want("s", "i", Desired::Stopped), want("c", "i", Desired::Running)];
        let o = [seen("s", "x", "running"), seen("z", "x", "running")];
        let kinds: Vec<&str> = reconcile("svc", &d, &o, None)
            .iter()
            .map(|a| match a {
                Action::Create { .. } => "create",
                Action::Stop { .. } => "stop",
                Action::Remove { .. } => "remove",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["create", "stop", "remove"]);
    }
}
