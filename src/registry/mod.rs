//! The agent's registry: one SQLite file (WAL, mode 0600) holding what each service should be
//! (desired specs), what was last seen, and the events that happened.

mod addresses;
pub mod intents;
mod ports;
mod read;
mod schema;
pub mod remedy;

pub use read::StatusSnapshot;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::plan::{spec_hash, Component, Plan};
use crate::proto::Event;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot open registry {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot open registry {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("registry schema version {found} is newer than this mcp-agent understands ({known}); upgrade mcp-agent")]
    TooNew { found: i64, known: i64 },
    #[error("registry migration to version {version} failed: {source}")]
    Migrate { version: i64, source: rusqlite::Error },
    #[error("registry query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("registry holds unreadable data for {what}: {message}")]
    Corrupt { what: String, message: String },
}

/// Whether a component should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Desired {
        if s == "running" {
            Desired::Running
        } else {
            Desired::Stopped
        }
    }

    pub fn from_active(active: bool) -> Desired {
        if active {
            Desired::Running
        } else {
            Desired::Stopped
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRecord {
    pub spec: Component,
    pub hash: String,
    pub desired: Desired,
}

impl ComponentRecord {
    pub fn new(spec: Component, desired: Desired) -> Self {
        ComponentRecord { hash: spec_hash(&spec), spec, desired }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub name: String,
    pub node: Option<String>,
    pub active: bool,
    pub updated_at: i64,
    /// In definition order.
    pub components: Vec<ComponentRecord>,
}

impl ServiceRecord {
    pub fn component(&self, name: &str) -> Option<&ComponentRecord> {
        self.components.iter().find(|c| c.spec.name == name)
    }
}

/// An event not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub service: String,
    pub component: Option<String>,
    pub kind: String,
    pub message: String,
}

/// An event that could not be written when it happened (see [`Registry::record_late`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEvent {
    pub event: NewEvent,
    /// Unix milliseconds when it happened.
    pub time: i64,
    /// A repair: counted as [`Registry::record_repair`] counts it.
    pub repair: bool,
}

/// How long a write waits for another writer's lock before it fails.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Drift of one object as the monitor last recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRow {
    pub service: String,
    /// The object's name (`<service>-<component>` for registered components).
    pub name: String,
    pub component: String,
    /// `missing`, `stopped`, `running`, `spec`, `orphan`, `unmanaged`.
    pub kind: String,
    pub detail: String,
    /// Unix milliseconds when this kind of drift was first seen.
    pub since: i64,
}

/// How often the monitor repaired a component, and when last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairCount {
    pub component: String,
    pub count: u32,
    pub last: i64,
}

/// An event from a row of `SELECT id, time, service, component, kind, message`.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event { id: r.get(0)?, time: r.get(1)?, service: r.get(2)?, component: r.get(3)?, kind: r.get(4)?, message: r.get(5)? })
}

/// Gets every event once it is committed (the daemon's alert hook).
pub type EventSink = Box<dyn Fn(&[Event]) + Send>;

pub struct Registry {
    conn: Connection,
    sink: Option<EventSink>,
    /// Made by this open (it did not exist, or held no schema).
    fresh: bool,
}

impl Registry {
    /// Open (creating if needed) the registry at `path`; the file is created with mode 0600 and
    /// its directory with 0700.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_err = |source| RegistryError::Open { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(open_err)?;
            }
            // Owner-only, also when it existed with a wider mode (it holds env files, VM images
            // with baked environments, the registry).
            let mode = std::fs::metadata(dir).map_err(open_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(open_err)?;
            }
        }
        // Create the file ourselves so that it never exists with a wider mode; SQLite gives the
        // -wal and -shm files the same mode as the database.
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(open_err)?;
        let mode = std::fs::metadata(path).map_err(open_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(open_err)?;
        }
        let conn = Connection::open(path).map_err(|source| RegistryError::Sqlite { path: path.to_path_buf(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut reg = Registry { conn, sink: None, fresh: false };
        reg.fresh = schema::migrate(&mut reg.conn)?;
        Ok(reg)
    }

    /// A second, read-only connection to an existing registry: in WAL mode it reads the last
    /// commit while a writer waits for or holds the write lock, so reads (`status`, the
    /// daemon's looks) never queue behind a write's busy timeout.
    pub fn open_reader(path: &Path) -> Result<Registry, RegistryError> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| RegistryError::Sqlite { path: path.to_path_buf(), source })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Registry { conn, sink: None, fresh: false })
    }

    /// Was the registry made by this open? (Everything mcp deployed on this node before is
    /// then unknown to it.)
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Hand every committed event to `sink` from now on.
    pub fn set_event_sink(&mut self, sink: EventSink) {
        self.sink = Some(sink);
    }

    fn committed(&self, events: Vec<Event>) {
        if let (Some(sink), false) = (&self.sink, events.is_empty()) {
            sink(&events);
        }
    }

    pub fn schema_version(&self) -> Result<i64, RegistryError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Store the outcome of a successful deploy in one transaction: the service row, the
    /// components it now has (replacing the old set) and the events.
    pub fn save_service(&mut self, record: &ServiceRecord, events: &[NewEvent]) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO services(name, node, active, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET node = excluded.node, active = excluded.active, updated_at = excluded.updated_at",
            params![record.name, record.node, record.active, record.updated_at],
        )?;
        tx.execute("DELETE FROM components WHERE service = ?1", [&record.name])?;
        for (i, c) in record.components.iter().enumerate() {
            let spec = serde_json::to_string(&c.spec).expect("component serializes");
            tx.execute(
                "INSERT INTO components(service, name, kind, spec, hash, desired, position) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![record.name, c.spec.name, c.spec.kind.as_str(), spec, c.hash, c.desired.as_str(), i as i64],
            )?;
        }
        let stored = insert_events(&tx, events)?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }

    /// Set the desired state of some components (all when `component` is None) plus events.
    pub fn set_desired(
        &mut self,
        service: &str,
        component: Option<&str>,
        desired: Desired,
        events: &[NewEvent],
    ) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE components SET desired = ?1 WHERE service = ?2 AND (?3 IS NULL OR name = ?3)",
            params![desired.as_str(), service, component],
        )?;
        tx.execute("UPDATE services SET updated_at = ?1 WHERE name = ?2", params![now_ms(), service])?;
        let stored = insert_events(&tx, events)?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }

    /// Forget a service (its events stay), recording `events`.
    pub fn delete_service(&mut self, name: &str, events: &[NewEvent]) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM components WHERE service = ?1", [name])?;
        tx.execute("DELETE FROM services WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM repairs WHERE service = ?1", [name])?;
        let stored = insert_events(&tx, events)?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }

    pub fn record_events(&mut self, events: &[NewEvent]) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        let stored = insert_events(&tx, events)?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }

    /// Every drift row (all services).
    pub fn drift(&self) -> Result<Vec<DriftRow>, RegistryError> {
        let mut st = self.conn.prepare("SELECT service, name, component, kind, detail, since FROM drift ORDER BY service, name")?;
        let rows = st.query_map([], |r| {
            Ok(DriftRow {
                service: r.get(0)?,
                name: r.get(1)?,
                component: r.get(2)?,
                kind: r.get(3)?,
                detail: r.get(4)?,
                since: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record drift transitions in one transaction: rows that start or change, rows that end
    /// (by service and name), and their events.
    pub fn record_drift(
        &mut self,
        upsert: &[DriftRow],
        resolved: &[(String, String)],
        events: &[NewEvent],
    ) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        for d in upsert {
            tx.execute(
                "INSERT INTO drift(service, name, component, kind, detail, since) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(service, name) DO UPDATE SET component = excluded.component, kind = excluded.kind,
                 detail = excluded.detail, since = excluded.since",
                params![d.service, d.name, d.component, d.kind, d.detail, d.since],
            )?;
        }
        for (service, name) in resolved {
            tx.execute("DELETE FROM drift WHERE service = ?1 AND name = ?2", params![service, name])?;
        }
        let stored = insert_events(&tx, events)?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }

    /// Count a repair of a component and record its event.
    pub fn record_repair(&mut self, service: &str, component: &str, event: &NewEvent) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO repairs(service, component, count, last) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT(service, component) DO UPDATE SET count = count + 1, last = excluded.last",
            params![service, component, now_ms()],
        )?;
        intents::finish(&tx, service, component)?;
        let stored = insert_events(&tx, std::slice::from_ref(event))?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }

    /// What happened while the registry could not be written, written now with the time each
    /// happened (repairs also counted), in one transaction.
    pub fn record_late(&mut self, late: &[LateEvent]) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        for l in late.iter().filter(|l| l.repair) {
            let component = l.event.component.as_deref().unwrap_or_default();
            tx.execute(
                "INSERT INTO repairs(service, component, count, last) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT(service, component) DO UPDATE SET count = count + 1, last = max(last, excluded.last)",
                params![l.event.service, component, l.time],
            )?;
        }
        for l in late {
            intents::finish(&tx, &l.event.service, l.event.component.as_deref().unwrap_or_default())?;
        }
        let stored = insert_events_at(&tx, late.iter().map(|l| (&l.event, l.time)))?;
        tx.commit()?;
        self.committed(stored);
        Ok(())
    }


    /// Keep at most `max_count` events and none older than `max_age_ms`; returns how many
    /// were deleted.
    /// Drop events older than `max_age_ms`, then keep at most `max_count` in all, shared
    /// fairly: each service keeps its newest events up to one quota ([`fair_quota`]), so a
    /// component that flaps for days cannot evict another service's history.
    pub fn prune_events(&mut self, max_count: u64, max_age_ms: i64) -> Result<usize, RegistryError> {
        let tx = self.conn.transaction()?;
        let mut n = tx.execute("DELETE FROM events WHERE time < ?1", [now_ms() - max_age_ms])?;
        let counts: Vec<u64> = {
            let mut st = tx.prepare("SELECT count(*) FROM events GROUP BY service")?;
            let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
            rows.map(|c| c.map(|c| c as u64)).collect::<Result<_, _>>()?
        };
        if let Some(quota) = fair_quota(&counts, max_count) {
            n += tx.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY service ORDER BY id DESC) AS nth FROM events) WHERE nth > ?1)",
                [quota as i64],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    pub fn count_events(&self) -> Result<u64, RegistryError> {
        Ok(self.conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The most recent `limit` events of a service (all services when None), oldest first.
    pub fn events(&self, service: Option<&str>, limit: u32) -> Result<Vec<Event>, RegistryError> {
        let mut st = self.conn.prepare(
            "SELECT id, time, service, component, kind, message FROM events
             WHERE ?1 IS NULL OR service = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![service, limit], event_row)?;
        let mut out: Vec<Event> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Events after `id`, oldest first, at most `limit`.
    pub fn events_after(&self, id: i64, limit: u32) -> Result<Vec<Event>, RegistryError> {
        let mut st = self.conn.prepare("SELECT id, time, service, component, kind, message FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows = st.query_map(params![id, limit], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest event's id (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64, RegistryError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }

    /// A number the agent keeps for itself (see schema 4).
    pub fn meta(&self, key: &str) -> Result<Option<i64>, RegistryError> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&mut self, key: &str, value: i64) -> Result<(), RegistryError> {
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", params![key, value])?;
        Ok(())
    }

    /// The plan as the registry holds it (for `service show` and `export`).
    pub fn plan(&self, name: &str) -> Result<Option<Plan>, RegistryError> {
        Ok(self.service(name)?.map(|s| Plan {
            version: crate::plan::PLAN_VERSION,
            name: s.name,
            node: s.node,
            active: s.active,
            // As the operator wrote it: the ports the agent assigned to routes taken out.
            components: s.components.iter().map(|c| crate::plan::routes::strip(&c.spec)).collect(),
        }))
    }
}

/// How many events each service may keep when they hold `counts` and at most `max` may stay
/// in all: the largest quota whose sum over services (each keeping min(count, quota)) fits.
/// `None` when everything fits.
pub fn fair_quota(counts: &[u64], max: u64) -> Option<u64> {
    if counts.iter().sum::<u64>() <= max {
        return None;
    }
    let fits = |q: u64| counts.iter().map(|c| (*c).min(q)).sum::<u64>() <= max;
    // fits(0) always holds; the quota lies below the largest count (else all would fit).
    let (mut lo, mut hi) = (0, counts.iter().copied().max().unwrap_or(0));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

fn insert_events(tx: &Transaction<'_>, events: &[NewEvent]) -> Result<Vec<Event>, RegistryError> {
    let t = now_ms();
    insert_events_at(tx, events.iter().map(|e| (e, t)))
}

/// Events with the time each happened.
fn insert_events_at<'e>(tx: &Transaction<'_>, events: impl Iterator<Item = (&'e NewEvent, i64)>) -> Result<Vec<Event>, RegistryError> {
    let mut out = Vec::new();
    for (e, t) in events {
        tx.execute(
            "INSERT INTO events(time, service, component, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t, e.service, e.component, e.kind, e.message],
        )?;
        out.push(Event {
            id: tx.last_insert_rowid(),
            time: t,
            service: e.service.clone(),
            component: e.component.clone(),
            kind: e.kind.clone(),
            message: e.message.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_events_keep_their_time_and_count_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(&dir.path().join("r.db")).unwrap();
        let event = |kind: &str| NewEvent { service: "s".into(), component: Some("web".into()), kind: kind.into(), message: "m".into() };
        let late = [
            LateEvent { event: event("repair"), time: 1_000, repair: true },
            LateEvent { event: event("repair.failed"), time: 2_000, repair: false },
        ];
        r.record_late(&late).unwrap();
        let times: Vec<(String, i64)> = r.events(Some("s"), 10).unwrap().into_iter().map(|e| (e.kind, e.time)).collect();
        assert!(times.contains(&("repair".into(), 1_000)) && times.contains(&("repair.failed".into(), 2_000)), "{times:?}");
        let counts = r.status_snapshot(Some("s"), 0).unwrap().repairs.remove("s").unwrap_or_default();
        assert_eq!((counts.len(), counts[0].count, counts[0].last), (1, 1, 1_000));
    }

    fn comp(name: &str, image: &str) -> Component {
        Component { name: name.into(), image: image.into(), ..Default::default() }
    }

    fn ev(kind: &str) -> NewEvent {
        NewEvent { service: "s".into(), component: Some("a".into()), kind: kind.into(), message: "m".into() }
    }

    #[test]
    fn roundtrip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/registry.db");
        let mut reg = Registry::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(reg.schema_version().unwrap(), schema::LATEST);
        let rec = ServiceRecord {
            name: "s".into(),
            node: Some("n".into()),
            active: true,
            updated_at: 5,
            components: vec![
                ComponentRecord::new(comp("b", "i1"), Desired::Running),
                ComponentRecord::new(comp("a", "i2"), Desired::Running),
            ],
        };
        reg.save_service(&rec, &[ev("created")]).unwrap();
        assert_eq!(reg.service("s").unwrap().unwrap(), rec, "order and specs preserved");
        reg.set_desired("s", Some("a"), Desired::Stopped, &[ev("stopped")]).unwrap();
        let got = reg.service("s").unwrap().unwrap();
        assert_eq!(got.component("a").unwrap().desired, Desired::Stopped);
        assert_eq!(got.component("b").unwrap().desired, Desired::Running);
        let events = reg.events(Some("s"), 10).unwrap();
        assert_eq!(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["created", "stopped"]);
        assert_eq!(reg.events(Some("s"), 1).unwrap()[0].kind, "stopped");
        assert!(reg.service("nope").unwrap().is_none());
        drop(reg);
        // Reopening runs no migration twice and keeps data.
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.services().unwrap().len(), 1);
        assert_eq!(reg.plan("s").unwrap().unwrap().components.len(), 2);
    }

    #[test]
    fn fair_quota_shares_the_bound() {
        assert_eq!(fair_quota(&[5, 5], 10), None);
        assert_eq!(fair_quota(&[50, 5], 20), Some(15), "the quiet service keeps all 5");
        assert_eq!(fair_quota(&[30, 30, 30], 30), Some(10));
        assert_eq!(fair_quota(&[100], 7), Some(7));
        assert_eq!(fair_quota(&[3, 3, 3], 2), Some(0), "fewer slots than services: none each");
    }

    #[test]
    fn a_flapping_service_does_not_evict_another_services_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(&dir.path().join("r.db")).unwrap();
        let quiet: Vec<NewEvent> = (0..5).map(|_| NewEvent { service: "quiet".into(), ..ev("deployed") }).collect();
        reg.record_events(&quiet).unwrap();
        let flapping: Vec<NewEvent> = (0..50).map(|_| NewEvent { service: "flappy".into(), ..ev("repair") }).collect();
        reg.record_events(&flapping).unwrap();
        reg.prune_events(20, i64::MAX / 2).unwrap();
        assert_eq!(reg.events(Some("quiet"), 100).unwrap().len(), 5, "older, but its own: kept");
        let kept = reg.events(Some("flappy"), 100).unwrap();
        assert_eq!(kept.len(), 15);
        assert_eq!(kept.last().unwrap().id, reg.events(None, 1).unwrap()[0].id, "the newest stay");
        assert_eq!(reg.count_events().unwrap(), 20);
    }

    #[test]
    fn newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(Registry::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = Registry::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer than this mcp-agent"), "{err}");
    }
}
