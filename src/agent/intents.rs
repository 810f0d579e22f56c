//! The daemon's repairs, written ahead: an intent before the runtime step (best effort: a
//! registry that cannot be written does not hold a repair back), removed with the repair's
//! record. A daemon that starts and finds one left says so: a repair was begun and its outcome
//! never recorded (the daemon died in between), with what the runtime shows of it now.

use super::Agent;
use crate::plan::instance_name;
use crate::registry::NewEvent;

impl Agent {
    /// A repair of `service`/`component` (`what`: restarted, recreated, ...) begins.
    pub(super) fn intend_repair(&self, service: &str, component: &str, what: &str) {
        if let Err(e) = self.registry().intend(service, component, what) {
            tracing::warn!(service, component, error = %e, "cannot write the repair's intent; repairing anyway");
        }
    }

    /// A repair whose outcome was recorded without taking its intent along (a failure).
    pub(super) fn finish_repair(&self, service: &str, component: &str) {
        if let Err(e) = self.registry().finish_intent(service, component) {
            tracing::warn!(service, component, error = %e, "cannot clear the repair's intent");
        }
    }

    /// At the daemon's start: every repair an earlier daemon began and never recorded, as a
    /// `repair.unrecorded` event naming what the runtime shows of it now.
    pub(super) fn report_unrecorded_repairs(&self) {
        let left = match self.registry().intents() {
            Ok(left) => left,
            Err(e) => return tracing::warn!(error = %e, "cannot read the repairs an earlier daemon began"),
        };
        for i in left {
            let name = instance_name(&i.service, &i.component);
            let now = match self.runtime().by_name(&name) {
                Ok(Some(o)) => o.state,
                Ok(None) => "missing".into(),
                Err(e) => format!("unknown ({e})"),
            };
            let ago = (crate::registry::now_ms() - i.since).max(0) / 1000;
            let message = format!(
                "a repair of {name} ({}, begun {ago} s ago) was cut short: the daemon stopped before recording how it went; {name} is {now} now",
                i.what
            );
            tracing::warn!(service = %i.service, "{message}");
            let event = NewEvent { service: i.service.clone(), component: Some(i.component.clone()), kind: "repair.unrecorded".into(), message };
            // Bound first: the registry's guard must be gone before finish_repair takes it again.
            let recorded = self.registry().record_events(&[event]);
            match recorded {
                Ok(()) => self.finish_repair(&i.service, &i.component),
                Err(e) => tracing::warn!(error = %e, "cannot record a repair an earlier daemon left; reporting it at the next start"),
            }
        }
    }
}
