//! push/pull: file transfer confined to a service's volume host dirs. The agent is root and a
//! volume belongs to whatever runs in it, which may change it at any moment (swap a directory
//! for a symlink, a file for a FIFO). So a path is checked lexically once ([`resolve`]), and
//! below the volume dir every lookup is done by the kernel relative to the volume dir's
//! descriptor: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` to read, and one
//! component at a time with `O_NOFOLLOW` to make directories and write. What was opened is what
//! is used (mode set with `fchmod`, rename relative to the directory's descriptor, reads from
//! the descriptor), so no path is followed twice. FIFOs and devices are refused without
//! blocking (`O_NONBLOCK`, type checked on the descriptor); setuid/setgid bits never travel.
//!
//! Transfers belong to the protocol session that began them ([`Transfers`] lives in the
//! session): another session cannot touch them, and a session that ends takes its unfinished
//! uploads' temp files with it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Component as PathPart, Path, PathBuf};

use data_encoding::BASE64;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::plan::Plan;
use crate::plan::hex_prefix;
use crate::proto::{ErrorCode, RpcError, TransferInfo as Begun, MODE_BITS};

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

/// A file in a volume dir: the dir (the operator's path) and the path below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub root: PathBuf,
    pub rel: PathBuf,
}

impl Target {
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// The same dir, one level deeper (`push` into a directory).
    pub fn child(&self, name: &str) -> Result<Target, RpcError> {
        let name_path = Path::new(name);
        match name_path.components().collect::<Vec<_>>().as_slice() {
            [PathPart::Normal(_)] => Ok(Target { root: self.root.clone(), rel: self.rel.join(name) }),
            _ => Err(refused(format!("{name:?} is not a file name"))),
        }
    }
}

/// Where `requested` points: relative paths are under the first root, absolute ones must be
/// inside some root. Lexical only: the rest is up to the kernel ([`Transfers`]).
pub fn resolve(roots: &[PathBuf], requested: &str) -> Result<Target, RpcError> {
    let first = roots.first().ok_or_else(|| refused("the service has no volumes, so no directory to transfer files in"))?;
    let p = Path::new(requested);
    if requested.is_empty() || p.components().any(|c| matches!(c, PathPart::ParentDir)) {
        return Err(refused(format!("{requested:?}: paths must not be empty or contain '..'")));
    }
    let (root, rest) = if p.is_absolute() {
        let Some((root, rest)) = roots.iter().find_map(|r| p.strip_prefix(r).ok().map(|rest| (r, rest))) else {
            let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            return Err(refused(format!("{requested:?} is outside the service's volume dirs ({})", list.join(", "))));
        };
        if rest.as_os_str().is_empty() {
            return Err(refused(format!("{requested:?} is the volume dir itself, not a file in it")));
        }
        (root, rest)
    } else {
        (first, p)
    };
    let rel: PathBuf = rest.components().filter(|c| matches!(c, PathPart::Normal(_))).collect();
    if rel.as_os_str().is_empty() {
        return Err(refused(format!("{requested:?} names no file")));
    }
    Ok(Target { root: root.clone(), rel })
}

/// What a failed lookup below a volume dir means, for the operator.
fn why(e: Errno, shown: &Path) -> RpcError {
    match e {
        Errno::LOOP => refused(format!("{} is or passes through a symlink; refusing to follow it", shown.display())),
        Errno::XDEV => refused(format!("{} leads outside its volume dir", shown.display())),
        Errno::NOENT => RpcError::new(ErrorCode::NotFound, format!("{}: no such file", shown.display())),
        Errno::ISDIR => refused(format!("{} is a directory", shown.display())),
        Errno::NOTDIR => refused(format!("{}: a part of the path is not a directory", shown.display())),
        e => RpcError::new(ErrorCode::Runtime, format!("{}: {}", shown.display(), std::io::Error::from(e))),
    }
}

fn open_root(root: &Path) -> Result<OwnedFd, RpcError> {
    rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| refused(format!("volume dir {} is not usable: {}", root.display(), std::io::Error::from(e))))
}

/// Open (making what is missing) the directory `rel` below `root`, one component at a time,
/// never following a symlink.
fn dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(root, ".", flags, Mode::empty())?;
    for part in rel.components() {
        let PathPart::Normal(name) = part else { continue };
        match rustix::fs::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        dir = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(d) => d,
            // O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR: say what it is.
            Err(Errno::NOTDIR) => {
                let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                let link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
                return Err(if link { Errno::LOOP } else { Errno::NOTDIR });
            }
            Err(e) => return Err(e),
        };
    }
    Ok(dir)
}

fn temp_name() -> OsString {
    let mut bytes = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    OsString::from(format!(".mcp-push-{}", hex_prefix(&bytes, 16)))
}

fn hex(hash: Sha256) -> String {
    hex_prefix(&hash.finalize(), 64)
}

/// An upload in progress: a temp file in the target's directory, both held open.
struct Upload {
    dir: OwnedFd,
    tmp: OsString,
    file: File,
    name: OsString,
    shown: PathBuf,
    mode: u32,
    size: u64,
    written: u64,
    hash: Sha256,
    done: bool,
}

impl Drop for Upload {
    /// An upload that did not finish leaves nothing behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(&self.dir, &self.tmp, AtFlags::empty());
        }
    }
}

/// A download in progress: the file as it was opened.
struct Download {
    file: File,
    shown: PathBuf,
    size: u64,
    /// Bytes served in order from the start, hashed.
    served: u64,
    hash: Sha256,
}

enum Transfer {
    Put(Box<Upload>),
    Get(Box<Download>),
}

/// The transfers of one protocol session.
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

    /// Start writing `target` (`mode` & 0777 once complete, `size` bytes).
    pub fn put_begin(&mut self, target: &Target, mode: u32, size: u64) -> Result<Begun, RpcError> {
        let shown = target.path();
        std::fs::create_dir_all(&target.root)
            .map_err(|e| RpcError::new(ErrorCode::Runtime, format!("cannot create {}: {e}", target.root.display())))?;
        let root = open_root(&target.root)?;
        let name = target.rel.file_name().ok_or_else(|| refused(format!("{} names no file", shown.display())))?.to_os_string();
        let parent = target.rel.parent().unwrap_or(Path::new(""));
        let dir = dir_beneath(root.as_fd(), parent).map_err(|e| why(e, &shown))?;
        match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => return Err(why(Errno::LOOP, &shown)),
                FileType::Directory => return Err(why(Errno::ISDIR, &shown)),
                _ => {}
            },
            Err(Errno::NOENT) => {}
            Err(e) => return Err(why(e, &shown)),
        }
        let tmp = temp_name();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, &tmp, flags, Mode::from_bits_truncate(0o600)).map_err(|e| why(e, &shown))?;
        let mode = mode & MODE_BITS;
        let up = Upload { dir, tmp, file: File::from(fd), name, shown: shown.clone(), mode, size, written: 0, hash: Sha256::new(), done: false };
        let token = self.add(Transfer::Put(Box::new(up)));
        Ok(Begun { token, path: shown.display().to_string(), size, mode })
    }

    pub fn put_chunk(&mut self, token: u64, data: &str) -> Result<u64, RpcError> {
        let Some(Transfer::Put(up)) = self.open.get_mut(&token) else {
            return Err(refused(format!("no upload {token} in progress in this session")));
        };
        let bytes = BASE64.decode(data.as_bytes()).map_err(|e| refused(format!("bad chunk: {e}")))?;
        if up.written + bytes.len() as u64 > up.size {
            return Err(refused("more data than announced"));
        }
        up.file.write_all(&bytes).map_err(|e| RpcError::new(ErrorCode::Runtime, format!("writing {}: {e}", up.shown.display())))?;
        up.hash.update(&bytes);
        up.written += bytes.len() as u64;
        Ok(up.written)
    }

    /// Check size and hash, set the mode on the written file, rename it into place (relative
    /// to its directory's descriptor).
    pub fn put_end(&mut self, token: u64, sha256: &str) -> Result<Begun, RpcError> {
        let Some(Transfer::Put(mut up)) = self.open.remove(&token) else {
            return Err(refused(format!("no upload {token} in progress in this session")));
        };
        let got = hex(std::mem::take(&mut up.hash));
        if up.written != up.size || got != sha256 {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                format!("upload of {} is incomplete or corrupt ({}/{} bytes); nothing was written", up.shown.display(), up.written, up.size),
            ));
        }
        let io = |e: std::io::Error| RpcError::new(ErrorCode::Runtime, format!("{}: {e}", up.shown.display()));
        rustix::fs::fchmod(&up.file, Mode::from_bits_truncate(up.mode)).map_err(|e| io(e.into()))?;
        up.file.sync_all().map_err(io)?;
        rustix::fs::renameat(&up.dir, &up.tmp, &up.dir, &up.name).map_err(|e| why(e, &up.shown))?;
        up.done = true;
        Ok(Begun { token, path: up.shown.display().to_string(), size: up.size, mode: up.mode })
    }

    pub fn get_begin(&mut self, target: &Target) -> Result<Begun, RpcError> {
        let shown = target.path();
        let root = open_root(&target.root)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = rustix::fs::openat2(&root, &target.rel, flags, Mode::empty(), resolve).map_err(|e| why(e, &shown))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| why(e, &shown))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(refused(format!("{} is not a regular file", shown.display())));
        }
        let (size, mode) = (st.st_size as u64, st.st_mode & MODE_BITS);
        let token = self.add(Transfer::Get(Box::new(Download { file: File::from(fd), shown: shown.clone(), size, served: 0, hash: Sha256::new() })));
        Ok(Begun { token, path: shown.display().to_string(), size, mode })
    }

    /// Up to [`CHUNK`] bytes from `offset`, base64; never past the size the file had when it
    /// was opened. A file that shrank meanwhile is an error, not a short file.
    pub fn get_chunk(&mut self, token: u64, offset: u64) -> Result<String, RpcError> {
        let Some(Transfer::Get(down)) = self.open.get_mut(&token) else {
            return Err(refused(format!("no download {token} in progress in this session")));
        };
        let want = down.size.saturating_sub(offset).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut n = 0;
        while n < want {
            let got = down
                .file
                .read_at(&mut buf[n..], offset + n as u64)
                .map_err(|e| RpcError::new(ErrorCode::Runtime, format!("reading {}: {e}", down.shown.display())))?;
            if got == 0 {
                return Err(RpcError::new(
                    ErrorCode::Runtime,
                    format!("{} shrank while it was read (at {} of {} bytes)", down.shown.display(), offset + n as u64, down.size),
                ));
            }
            n += got;
        }
        if offset == down.served {
            down.hash.update(&buf);
            down.served += n as u64;
        }
        Ok(BASE64.encode(&buf))
    }

    /// End a transfer. For a download, `sha256` (what the client received) must be the hash of
    /// what was served.
    pub fn end(&mut self, token: u64, sha256: Option<&str>) -> Result<(), RpcError> {
        match self.open.remove(&token) {
            Some(Transfer::Get(mut down)) => {
                let Some(theirs) = sha256 else { return Ok(()) };
                let ours = hex(std::mem::take(&mut down.hash));
                if down.served != down.size || ours != theirs {
                    return Err(RpcError::new(
                        ErrorCode::Runtime,
                        format!("pull of {} did not arrive intact ({} of {} bytes served in order); try again", down.shown.display(), down.served, down.size),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Hex SHA-256 of `bytes` (both ends of a transfer).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::new_with_prefix(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn roots() -> Vec<PathBuf> {
        vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
    }

    #[test]
    fn lexical_resolution() {
        let t = |root: &str, rel: &str| Target { root: root.into(), rel: rel.into() };
        assert_eq!(resolve(&roots(), "x.toml").unwrap(), t("/srv/a", "x.toml"));
        assert_eq!(resolve(&roots(), "./d/x").unwrap(), t("/srv/a", "d/x"));
        assert_eq!(resolve(&roots(), "/srv/b/c").unwrap(), t("/srv/b", "c"));
        for bad in ["../x", "d/../../x", "/srv/a/../etc/passwd", "/etc/passwd", "/srv/ab/x", "", ".", "/srv/a"] {
            assert!(resolve(&roots(), bad).is_err(), "{bad} must be refused");
        }
        assert!(resolve(&[], "x").unwrap_err().message.contains("no volumes"));
        assert!(t("/srv/a", "d").child("../x").is_err() && t("/srv/a", "d").child("a/b").is_err());
        assert_eq!(t("/srv/a", "d").child("f").unwrap(), t("/srv/a", "d/f"));
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        (dir, root, outside)
    }

    fn at(root: &Path, rel: &str) -> Target {
        Target { root: root.to_path_buf(), rel: rel.into() }
    }

    #[test]
    fn symlinks_fifos_and_dirs_are_refused_both_ways() {
        let (_dir, root, outside) = setup();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("filelink")).unwrap();
        std::fs::create_dir_all(root.join("d")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::from_bits_truncate(0o600), 0).unwrap();
        let mut t = Transfers::default();
        for (rel, expect) in [("link/secret", "symlink"), ("filelink", "symlink"), ("d", "not a regular file"), ("fifo", "not a regular file")] {
            let e = t.get_begin(&at(&root, rel)).unwrap_err().message;
            assert!(e.contains(expect), "{rel}: {e}");
        }
        for (rel, expect) in [("link/new", "symlink"), ("link/deeper/x", "symlink"), ("filelink", "symlink"), ("d", "directory")] {
            let e = t.put_begin(&at(&root, rel), 0o644, 1).unwrap_err().message;
            assert!(e.contains(expect), "{rel}: {e}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing made outside");
    }

    #[test]
    fn put_is_atomic_verified_and_never_setuid() {
        let (_dir, root, _) = setup();
        let mut t = Transfers::default();
        let b = t.put_begin(&at(&root, "sub/f.txt"), 0o6755, 5).unwrap();
        assert_eq!(b.mode, 0o755);
        t.put_chunk(b.token, &BASE64.encode(b"hel")).unwrap();
        assert!(!root.join("sub/f.txt").exists(), "nothing visible before the end");
        t.put_chunk(b.token, &BASE64.encode(b"lo")).unwrap();
        assert!(t.put_chunk(b.token, &BASE64.encode(b"!")).is_err());
        t.put_end(b.token, &sha256_hex(b"hello")).unwrap();
        assert_eq!(std::fs::read(root.join("sub/f.txt")).unwrap(), b"hello");
        assert_eq!(std::fs::metadata(root.join("sub/f.txt")).unwrap().permissions().mode() & 0o7777, 0o755);
        // A corrupt upload leaves the old file alone, and an abandoned one leaves no temp file.
        let b = t.put_begin(&at(&root, "sub/f.txt"), 0o600, 2).unwrap();
        t.put_chunk(b.token, &BASE64.encode(b"xx")).unwrap();
        assert!(t.put_end(b.token, "00").is_err());
        assert_eq!(std::fs::read(root.join("sub/f.txt")).unwrap(), b"hello");
        let _abandoned = t.put_begin(&at(&root, "sub/g"), 0o600, 2).unwrap();
        assert_eq!(std::fs::read_dir(root.join("sub")).unwrap().count(), 2, "f.txt and the upload's temp file");
        drop(t);
        assert_eq!(std::fs::read_dir(root.join("sub")).unwrap().count(), 1, "the session's end removes the temp file");
    }

    #[test]
    fn get_serves_what_was_opened_and_checks_the_end() {
        let (_dir, root, _) = setup();
        std::fs::write(root.join("f"), vec![7u8; 3000]).unwrap();
        std::fs::set_permissions(root.join("f"), std::fs::Permissions::from_mode(0o6755)).unwrap();
        let mut t = Transfers::default();
        let b = t.get_begin(&at(&root, "f")).unwrap();
        assert_eq!((b.size, b.mode), (3000, 0o755), "setuid/setgid never travel");
        let data = BASE64.decode(t.get_chunk(b.token, 0).unwrap().as_bytes()).unwrap();
        assert_eq!(data.len(), 3000);
        assert!(t.end(b.token, Some(&sha256_hex(&data))).is_ok());
        // Torn: the file shrinks after the open.
        let b = t.get_begin(&at(&root, "f")).unwrap();
        std::fs::write(root.join("f"), b"short").unwrap();
        assert!(t.get_chunk(b.token, 0).unwrap_err().message.contains("shrank while it was read"));
        // A wrong hash at the end is an error.
        let b = t.get_begin(&at(&root, "f")).unwrap();
        t.get_chunk(b.token, 0).unwrap();
        assert!(t.end(b.token, Some("00")).unwrap_err().message.contains("did not arrive intact"));
        // Another session's tokens mean nothing here.
        let mut other = Transfers::default();
        let b = t.get_begin(&at(&root, "f")).unwrap();
        assert!(other.get_chunk(b.token, 0).unwrap_err().message.contains("in this session"));
    }
}
