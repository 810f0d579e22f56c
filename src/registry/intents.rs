//! Write-ahead intents of the daemon's repairs: written before the runtime step, removed with
//! the repair's record. One still here when a daemon starts belongs to a daemon that died in
//! between: the repair may or may not have happened, and nobody recorded it.

use rusqlite::{params, Transaction};

use super::{now_ms, Registry, RegistryError};

/// A repair begun and not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub service: String,
    pub component: String,
    /// What was begun (`restarted`, `recreated`, ...).
    pub what: String,
    /// Unix milliseconds.
    pub since: i64,
}

pub(super) fn finish(tx: &Transaction<'_>, service: &str, component: &str) -> Result<(), RegistryError> {
    tx.execute("DELETE FROM intents WHERE service = ?1 AND component = ?2", params![service, component])?;
    Ok(())
}

impl Registry {
    /// Say a repair of `service`/`component` begins now. Never waits for a lock another
    /// writer holds (the repair must not wait for its note): then it fails at once.
    pub fn intend(&mut self, service: &str, component: &str, what: &str) -> Result<(), RegistryError> {
        self.conn.busy_timeout(std::time::Duration::ZERO)?;
        let written = self.conn.execute(
            "INSERT INTO intents (service, component, what, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (service, component) DO UPDATE SET what = excluded.what, since = excluded.since",
            params![service, component, what, now_ms()],
        );
        self.conn.busy_timeout(super::BUSY_TIMEOUT)?;
        written?;
        Ok(())
    }

    /// The repair is over (its outcome recorded elsewhere).
    pub fn finish_intent(&mut self, service: &str, component: &str) -> Result<(), RegistryError> {
        let tx = self.conn.transaction()?;
        finish(&tx, service, component)?;
        tx.commit()?;
        Ok(())
    }

    /// Every intent left, oldest first.
    pub fn intents(&self) -> Result<Vec<Intent>, RegistryError> {
        let mut st = self.conn.prepare("SELECT service, component, what, since FROM intents ORDER BY since")?;
        let rows = st.query_map([], |r| Ok(Intent { service: r.get(0)?, component: r.get(1)?, what: r.get(2)?, since: r.get(3)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::NewEvent;
    use super::*;

    #[test]
    fn a_recorded_repair_takes_its_intent_along() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(&dir.path().join("r.db")).unwrap();
        r.intend("s", "web", "restarted").unwrap();
        r.intend("t", "db", "recreated").unwrap();
        let event = NewEvent { service: "s".into(), component: Some("web".into()), kind: "repair".into(), message: "m".into() };
        r.record_repair("s", "web", &event).unwrap();
        let left = r.intents().unwrap();
        assert_eq!(left.iter().map(|i| (i.service.as_str(), i.what.as_str())).collect::<Vec<_>>(), vec![("t", "recreated")]);
        r.finish_intent("t", "db").unwrap();
        assert!(r.intents().unwrap().is_empty());
    }
}
