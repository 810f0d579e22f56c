//! push/pull: file transfer confined to a service's volume host dirs. Paths are checked
//! lexically (no `..`, inside a root) and then on disk (no symlink leads out of the root).
//! Writes go to a temp file in the target dir and are renamed into place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component as PathPart, Path, PathBuf};

use data_encoding::BASE64;
use sha2::{Digest, Sha256};

use crate::plan::Plan;
use crate::proto::{ErrorCode, RpcError, TransferInfo as Begun};

/// Largest chunk either side sends (raw bytes).
pub const CHUNK: usize = 1 << 20;

fn refused(msg: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::BadRequest, msg)
}

/// The host dirs of a service's volumes, in definition order, without duplicates.
pub fn volume_roots(plan: &Plan) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for c in &plan.components {
        for b in crate::plan::binds(&c.volumes) {
            if !roots.contains(&b.host) {
                roots.push(b.host);
            }
        }
    }
    roots
}

/// Where `requested` points: relative paths are under the first root, absolute ones must be
/// inside some root. Lexical only; see [`check_on_disk`].
pub fn resolve(roots: &[PathBuf], requested: &str) -> Result<(PathBuf, PathBuf), RpcError> {
    let first = roots.first().ok_or_else(|| refused("the service has no volumes, so no directory to transfer files in"))?;
    let p = Path::new(requested);
    if requested.is_empty() || p.components().any(|c| matches!(c, PathPart::ParentDir)) {
        return Err(refused(format!("{requested:?}: paths must not be empty or contain '..'")));
    }
    if p.is_absolute() {
        for root in roots {
            if let Ok(rest) = p.strip_prefix(root) {
                if rest.as_os_str().is_empty() {
                    return Err(refused(format!("{requested:?} is the volume dir itself, not a file in it")));
                }
                return Ok((root.clone(), p.to_path_buf()));
            }
        }
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(refused(format!("{requested:?} is outside the service's volume dirs ({})", list.join(", "))));
    }
    let rel: PathBuf = p.components().filter(|c| !matches!(c, PathPart::CurDir)).collect();
    if rel.as_os_str().is_empty() {
        return Err(refused(format!("{requested:?} names no file")));
    }
    Ok((first.clone(), first.join(rel)))
}

/// The deepest existing ancestor of `target`'s dir must resolve inside `root`, and `target`
/// itself must not be a symlink.
pub fn check_on_disk(root: &Path, target: &Path) -> Result<(), RpcError> {
    let real_root = root
        .canonicalize()
        .map_err(|e| refused(format!("volume dir {} is not usable: {e}", root.display())))?;
    let mut probe = target.parent().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p.to_path_buf(),
            None => break,
        };
    }
    let real = probe.canonicalize().map_err(|e| refused(format!("{}: {e}", probe.display())))?;
    if !real.starts_with(&real_root) {
        return Err(refused(format!("{} leads outside {} (through a symlink)", target.display(), root.display())));
    }
    if let Ok(meta) = std::fs::symlink_metadata(target) {
        if meta.file_type().is_symlink() {
            return Err(refused(format!("{} is a symlink; refusing to follow it", target.display())));
        }
        if meta.is_dir() {
            return Err(refused(format!("{} is a directory", target.display())));
        }
    }
    Ok(())
}

enum Transfer {
    Put { tmp: tempfile::NamedTempFile, dest: PathBuf, mode: u32, size: u64, written: u64, hash: Sha256 },
    Get { file: File },
}

/// Transfers open in this session.
#[derive(Default)]
pub struct Transfers {
    next: u64,
    open: HashMap<u64, Transfer>,
}


impl Transfers {
    fn add(&mut self, t: Transfer) -> u64 {
        self.next += 1;
        self.open.insert(self.next, t);
        self.next
    }

    /// Start writing `target` (already resolved and checked).
    pub fn put_begin(&mut self, root: &Path, target: &Path, mode: u32, size: u64) -> Result<Begun, RpcError> {
        let io = |e: std::io::Error| RpcError::new(ErrorCode::Runtime, format!("{}: {e}", target.display()));
        let dir = target.parent().unwrap_or(root);
        std::fs::create_dir_all(dir).map_err(io)?;
        // Checked again now that the dirs exist.
        check_on_disk(root, target)?;
        let tmp = tempfile::Builder::new().prefix(".mcp-push-").tempfile_in(dir).map_err(io)?;
        let token = self.add(Transfer::Put { tmp, dest: target.to_path_buf(), mode, size, written: 0, hash: Sha256::new() });
        Ok(Begun { token, path: target.display().to_string(), size, mode })
    }

    pub fn put_chunk(&mut self, token: u64, data: &str) -> Result<u64, RpcError> {
        let Some(Transfer::Put { tmp, written, size, hash, .. }) = self.open.get_mut(&token) else {
            return Err(refused(format!("no upload {token} in progress")));
        };
        let bytes = BASE64.decode(data.as_bytes()).map_err(|e| refused(format!("bad chunk: {e}")))?;
        if *written + bytes.len() as u64 > *size {
            return Err(refused("more data than announced"));
        }
        tmp.write_all(&bytes).map_err(|e| RpcError::new(ErrorCode::Runtime, format!("writing: {e}")))?;
        hash.update(&bytes);
        *written += bytes.len() as u64;
        Ok(*written)
    }

    /// Check size and hash, set the mode, rename into place.
    pub fn put_end(&mut self, token: u64, sha256: &str) -> Result<Begun, RpcError> {
        let Some(Transfer::Put { tmp, dest, mode, size, written, hash }) = self.open.remove(&token) else {
            return Err(refused(format!("no upload {token} in progress")));
        };
        let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if written != size || got != sha256 {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                format!("upload of {} is incomplete or corrupt ({written}/{size} bytes); nothing was written", dest.display()),
            ));
        }
        let io = |e: std::io::Error| RpcError::new(ErrorCode::Runtime, format!("{}: {e}", dest.display()));
        tmp.as_file().sync_all().map_err(io)?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode & 0o7777)).map_err(io)?;
        tmp.persist(&dest).map_err(|e| io(e.error))?;
        Ok(Begun { token, path: dest.display().to_string(), size, mode })
    }

    pub fn get_begin(&mut self, root: &Path, target: &Path) -> Result<Begun, RpcError> {
        check_on_disk(root, target)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(target)
            .map_err(|e| RpcError::new(ErrorCode::NotFound, format!("{}: {e}", target.display())))?;
        let meta = file.metadata().map_err(|e| RpcError::new(ErrorCode::Runtime, e.to_string()))?;
        if !meta.is_file() {
            return Err(refused(format!("{} is not a regular file", target.display())));
        }
        let (size, mode) = (meta.len(), meta.permissions().mode() & 0o7777);
        let token = self.add(Transfer::Get { file });
        Ok(Begun { token, path: target.display().to_string(), size, mode })
    }

    /// Up to [`CHUNK`] bytes from `offset`, base64.
    pub fn get_chunk(&mut self, token: u64, offset: u64) -> Result<String, RpcError> {
        let Some(Transfer::Get { file }) = self.open.get_mut(&token) else {
            return Err(refused(format!("no download {token} in progress")));
        };
        let io = |e: std::io::Error| RpcError::new(ErrorCode::Runtime, e.to_string());
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            let got = file.read(&mut buf[n..]).map_err(io)?;
            if got == 0 {
                break;
            }
            n += got;
        }
        Ok(BASE64.encode(&buf[..n]))
    }

    pub fn end(&mut self, token: u64) {
        self.open.remove(&token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<PathBuf> {
        vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
    }

    #[test]
    fn lexical_resolution() {
        assert_eq!(resolve(&roots(), "x.toml").unwrap(), (PathBuf::from("/srv/a"), PathBuf::from("/srv/a/x.toml")));
        assert_eq!(resolve(&roots(), "./d/x").unwrap().1, PathBuf::from("/srv/a/d/x"));
        assert_eq!(resolve(&roots(), "/srv/b/c").unwrap(), (PathBuf::from("/srv/b"), PathBuf::from("/srv/b/c")));
        for bad in ["../x", "d/../../x", "/srv/a/../etc/passwd", "/etc/passwd", "/srv/ab/x", "", ".", "/srv/a"] {
            assert!(resolve(&roots(), bad).is_err(), "{bad} must be refused");
        }
        assert!(resolve(&[], "x").unwrap_err().message.contains("no volumes"));
    }

    #[test]
    fn symlinks_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("filelink")).unwrap();
        assert!(check_on_disk(&root, &root.join("ok/new.txt")).is_ok());
        assert!(check_on_disk(&root, &root.join("link/x")).unwrap_err().message.contains("outside"));
        assert!(check_on_disk(&root, &root.join("link/deeper/x")).is_err());
        assert!(check_on_disk(&root, &root.join("filelink")).unwrap_err().message.contains("symlink"));
    }

    #[test]
    fn put_is_atomic_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let target = root.join("sub/f.txt");
        let mut t = Transfers::default();
        let b = t.put_begin(&root, &target, 0o640, 5).unwrap();
        t.put_chunk(b.token, &BASE64.encode(b"hel")).unwrap();
        assert!(!target.exists(), "nothing visible before the end");
        t.put_chunk(b.token, &BASE64.encode(b"lo")).unwrap();
        assert!(t.put_chunk(b.token, &BASE64.encode(b"!")).is_err());
        let sum: String = Sha256::digest(b"hello").iter().map(|b| format!("{b:02x}")).collect();
        t.put_end(b.token, &sum).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o640);
        // A corrupt upload leaves the old file alone.
        let b = t.put_begin(&root, &target, 0o600, 2).unwrap();
        t.put_chunk(b.token, &BASE64.encode(b"xx")).unwrap();
        assert!(t.put_end(b.token, "00").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        let leftovers = std::fs::read_dir(root.join("sub")).unwrap().count();
        assert_eq!(leftovers, 1, "temp files are cleaned up");
    }
}
