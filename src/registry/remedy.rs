//! What to do about a registry that cannot be opened or written, by cause: a full disk, a
//! damaged file, a lock held by another process, or a dir that cannot be written are fixed
//! differently, and "set another state dir" is right only for the last.

use rusqlite::ErrorCode;

use super::RegistryError;

/// Why the registry failed, as far as the error tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    DiskFull,
    Damaged,
    Locked,
    NotWritable,
    TooNew,
    Other,
}

impl RegistryError {
    pub fn cause(&self) -> Cause {
        let sqlite = |e: &rusqlite::Error| match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Cause::DiskFull,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Cause::Damaged,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Cause::Locked,
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => Cause::NotWritable,
            _ => Cause::Other,
        };
        match self {
            RegistryError::Open { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Cause::DiskFull,
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => Cause::NotWritable,
                _ => Cause::Other,
            },
            RegistryError::Sqlite { source, .. } | RegistryError::Migrate { source, .. } | RegistryError::Query(source) => sqlite(source),
            RegistryError::TooNew { .. } => Cause::TooNew,
            RegistryError::Corrupt { .. } => Cause::Damaged,
        }
    }

    /// One sentence: what the operator does about it (`file` is the registry's path).
    pub fn remedy(&self, file: &std::path::Path) -> String {
        let dir = file.parent().unwrap_or(file).display();
        let file = file.display();
        match self.cause() {
            Cause::DiskFull => format!("the disk holding {dir} is full: free space there (`df -h {dir}`), then try again"),
            Cause::Damaged => format!(
                "{file} is damaged: stop the agent, move it aside (keep it: `sqlite3 {file} .recover` may save its data), \
                 and start again with a fresh registry; running containers can then be taken over with `mcp adopt`"
            ),
            Cause::Locked => format!("another process holds {file} locked for a long write: try again (`fuser -v {file}` shows who)"),
            Cause::NotWritable => format!("{dir} cannot be written by this user: set --state-dir or MCP_AGENT_STATE to a writable dir"),
            Cause::TooNew => "upgrade mcp-agent on this node".into(),
            Cause::Other => format!("check {file} and the disk it is on"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> RegistryError {
        RegistryError::Query(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn each_cause_gets_its_own_remedy() {
        let path = std::path::Path::new("/var/lib/mcp/registry.db");
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_FULL).cause(), Cause::DiskFull);
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).remedy(path).contains("df -h /var/lib/mcp"));
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_CORRUPT).cause(), Cause::Damaged);
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_NOTADB).cause(), Cause::Damaged);
        assert!(sqlite(rusqlite::ffi::SQLITE_NOTADB).remedy(path).contains("move it aside"));
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_BUSY).cause(), Cause::Locked);
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_READONLY).cause(), Cause::NotWritable);
        let denied = RegistryError::Open { path: path.into(), source: std::io::Error::from_raw_os_error(libc::EACCES) };
        assert!(denied.remedy(path).contains("set --state-dir"));
        let full = RegistryError::Open { path: path.into(), source: std::io::Error::from_raw_os_error(libc::ENOSPC) };
        assert_eq!(full.cause(), Cause::DiskFull);
        assert!(!full.remedy(path).contains("--state-dir"), "a full disk is not fixed by another dir name");
    }
}
