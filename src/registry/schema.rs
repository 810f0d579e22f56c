//! Registry schema migrations, applied in order; `PRAGMA user_version` records the last one.

use rusqlite::{Connection, TransactionBehavior};

use super::RegistryError;

/// Each entry migrates from version `i` to `i + 1`. Never edit a released entry: append.
const MIGRATIONS: &[&str] = &[
    // 1: services, components (desired spec + hash), events.
    "CREATE TABLE services (
        name TEXT PRIMARY KEY,
        node TEXT,
        active INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE components (
        service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        spec TEXT NOT NULL,
        hash TEXT NOT NULL,
        desired TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (service, name)
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        service TEXT NOT NULL,
        component TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
     );
     CREATE INDEX events_by_service ON events(service, id);",
    // 2: the monitor's memory: drift as last recorded (one row per object while it drifts, so
    // an event is written once per transition, also across agent restarts) and repair counts.
    "CREATE TABLE drift (
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        component TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (service, name)
     );
     CREATE TABLE repairs (
        service TEXT NOT NULL,
        component TEXT NOT NULL,
        count INTEGER NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (service, component)
     );
     CREATE INDEX events_by_time ON events(time);",
    // 3: static addresses the agent assigned (VMs on isolated networks): one per component,
    // kept across redeploys, never two alike on the node.
    "CREATE TABLE addresses (
        service TEXT NOT NULL,
        component TEXT NOT NULL,
        address TEXT NOT NULL UNIQUE,
        prefix INTEGER NOT NULL,
        PRIMARY KEY (service, component)
     );",
    // 4: small facts of the agent's own (e.g. the last event the alert hook was run for, so
    // alerting resumes where it stopped).
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );",
    // 5: host ports the agent assigned to routes (`[[components.routes]]`): kept across
    // redeploys, never two alike on the node, released when the route goes.
    "CREATE TABLE route_ports (
        service TEXT NOT NULL,
        component TEXT NOT NULL,
        route TEXT NOT NULL,
        port INTEGER NOT NULL UNIQUE,
        PRIMARY KEY (service, component, route)
     );",
    // 6: repairs the daemon began and has not recorded yet (a write-ahead intent): one left
    // behind by a daemon that died in between is reported when the next one starts.
    "CREATE TABLE intents (
        service TEXT NOT NULL,
        component TEXT NOT NULL,
        what TEXT NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (service, component)
     );",
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Bring the schema to [`LATEST`]; true when this call made it from nothing (a new registry).
pub fn migrate(conn: &mut Connection) -> Result<bool, RegistryError> {
    // Current (the usual case): nothing to write, so no write lock to wait for (another writer
    // holding it must not keep a reader from opening the registry).
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current == LATEST {
        return Ok(false);
    }
    let mut created = false;
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two agents opening a
        // fresh registry at once cannot both apply the same migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > LATEST {
            return Err(RegistryError::TooNew { found, known: LATEST });
        }
        if found == LATEST {
            return Ok(created);
        }
        created |= found == 0;
        let version = found + 1;
        let err = |source| RegistryError::Migrate { version, source };
        tx.execute_batch(MIGRATIONS[found as usize]).map_err(err)?;
        tx.pragma_update(None, "user_version", version).map_err(err)?;
        tx.commit().map_err(err)?;
    }
}
