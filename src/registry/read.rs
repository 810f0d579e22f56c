//! Reading service records, and what `mcp status` shows, each in one read transaction: a
//! deploy that commits meanwhile is seen whole or not at all (a record from before it with
//! events from after it once made status contradict itself).

use std::collections::HashMap;

use rusqlite::{params, Connection};

use super::{ComponentRecord, Desired, RegistryError, RepairCount, ServiceRecord};
use crate::plan::Component;
use crate::proto::Event;

/// What `mcp status` shows of the registry, read at one moment.
#[derive(Debug, Default)]
pub struct StatusSnapshot {
    pub records: Vec<ServiceRecord>,
    /// Per service, its components' repair counts.
    pub repairs: HashMap<String, Vec<RepairCount>>,
    /// Per service, its newest events (oldest first).
    pub events: HashMap<String, Vec<Event>>,
}

impl super::Registry {
    pub fn service(&self, name: &str) -> Result<Option<ServiceRecord>, RegistryError> {
        let tx = self.conn.unchecked_transaction()?;
        Ok(records(&tx, Some(name))?.pop())
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, RegistryError> {
        let tx = self.conn.unchecked_transaction()?;
        records(&tx, None)
    }

    /// The records of `service` (or all), their repair counts and each one's newest `events`.
    pub fn status_snapshot(&self, service: Option<&str>, events: u32) -> Result<StatusSnapshot, RegistryError> {
        let tx = self.conn.unchecked_transaction()?;
        let records = records(&tx, service)?;
        let mut repairs: HashMap<String, Vec<RepairCount>> = HashMap::new();
        {
            let mut st = tx.prepare(
                "SELECT service, component, count, last FROM repairs WHERE ?1 IS NULL OR service = ?1 ORDER BY service, component",
            )?;
            let rows = st.query_map([service], |r| {
                Ok((r.get::<_, String>(0)?, RepairCount { component: r.get(1)?, count: r.get(2)?, last: r.get(3)? }))
            })?;
            for row in rows {
                let (s, count) = row?;
                repairs.entry(s).or_default().push(count);
            }
        }
        let mut by_service: HashMap<String, Vec<Event>> = HashMap::new();
        if events > 0 {
            let mut st = tx.prepare(
                "SELECT id, time, service, component, kind, message FROM (
                   SELECT *, row_number() OVER (PARTITION BY service ORDER BY id DESC) AS nth
                   FROM events WHERE ?1 IS NULL OR service = ?1)
                 WHERE nth <= ?2 ORDER BY id",
            )?;
            let rows = st.query_map(params![service, events], super::event_row)?;
            for row in rows {
                let e = row?;
                by_service.entry(e.service.clone()).or_default().push(e);
            }
        }
        Ok(StatusSnapshot { records, repairs, events: by_service })
    }
}

/// The records of `only` (or every service), by name, each with its components in definition
/// order: two queries, whatever the number of services.
fn records(conn: &Connection, only: Option<&str>) -> Result<Vec<ServiceRecord>, RegistryError> {
    let mut out: Vec<ServiceRecord> = {
        let mut st = conn.prepare("SELECT name, node, active, updated_at FROM services WHERE ?1 IS NULL OR name = ?1 ORDER BY name")?;
        let rows = st.query_map([only], |r| {
            Ok(ServiceRecord { name: r.get(0)?, node: r.get(1)?, active: r.get(2)?, updated_at: r.get(3)?, components: Vec::new() })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let at: HashMap<String, usize> = out.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
    let mut st = conn.prepare(
        "SELECT service, name, spec, hash, desired FROM components WHERE ?1 IS NULL OR service = ?1 ORDER BY service, position, name",
    )?;
    let rows = st.query_map([only], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
    })?;
    for row in rows {
        let (service, name, spec, hash, desired) = row?;
        let Some(&i) = at.get(&service) else { continue };
        let spec: Component = serde_json::from_str(&spec)
            .map_err(|e| RegistryError::Corrupt { what: format!("{service}/{name}"), message: e.to_string() })?;
        out[i].components.push(ComponentRecord { spec, hash, desired: Desired::parse(&desired) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{NewEvent, Registry};
    use super::*;

    fn record(name: &str, components: &[&str]) -> ServiceRecord {
        let components = components
            .iter()
            .map(|c| ComponentRecord::new(Component { name: c.to_string(), image: "i".into(), ..Default::default() }, Desired::Running))
            .collect();
        ServiceRecord { name: name.into(), node: None, active: true, updated_at: 1, components }
    }

    fn event(service: &str, n: u32) -> NewEvent {
        NewEvent { service: service.into(), component: None, kind: "k".into(), message: format!("{service} {n}") }
    }

    #[test]
    fn a_status_snapshot_holds_each_service_with_its_own_newest_events_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut w = Registry::open(&path).unwrap();
        w.save_service(&record("b", &["z", "a"]), &[]).unwrap();
        w.save_service(&record("a", &["x"]), &[]).unwrap();
        // a is busy (many events), b quiet: b's events are not crowded out of its status.
        w.record_events(&(0..10).map(|n| event("a", n)).collect::<Vec<_>>()).unwrap();
        w.record_events(&[event("b", 0)]).unwrap();
        w.record_events(&(10..13).map(|n| event("a", n)).collect::<Vec<_>>()).unwrap();
        w.record_repair("b", "z", &event("b", 1)).unwrap();
        let r = Registry::open_reader(&path).unwrap();

        let all = r.status_snapshot(None, 3).unwrap();
        let names: Vec<(&str, Vec<&str>)> =
            all.records.iter().map(|s| (s.name.as_str(), s.components.iter().map(|c| c.spec.name.as_str()).collect())).collect();
        assert_eq!(names, vec![("a", vec!["x"]), ("b", vec!["z", "a"])], "by name, components in definition order");
        let msgs = |s: &str| all.events[s].iter().map(|e| e.message.clone()).collect::<Vec<_>>();
        assert_eq!(msgs("a"), ["a 10", "a 11", "a 12"], "the newest, oldest first");
        assert_eq!(msgs("b"), ["b 0", "b 1"]);
        assert_eq!(all.repairs["b"].iter().map(|c| (c.component.as_str(), c.count)).collect::<Vec<_>>(), [("z", 1)]);
        assert!(!all.repairs.contains_key("a"));
        assert_eq!(r.services().unwrap(), all.records);

        let one = r.status_snapshot(Some("b"), 1).unwrap();
        assert_eq!(one.records, vec![record("b", &["z", "a"])]);
        assert_eq!(one.events.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(one.events["b"].len(), 1);
        assert_eq!(r.service("b").unwrap(), one.records.into_iter().next());
        assert!(r.status_snapshot(Some("nope"), 5).unwrap().records.is_empty());
        assert_eq!(r.status_snapshot(None, 0).unwrap().events.len(), 0);
    }
}
