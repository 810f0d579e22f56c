//! File trees read and written the way a root agent must when whatever runs in a container or
//! VM owns the files: every entry is opened relative to its parent directory's descriptor with
//! `O_NOFOLLOW`, its type and size are taken from the open descriptor (`fstat`), and nothing is
//! ever looked up by a path that the tree's owner could change between a check and a use.
//!
//! [`walk`] visits a tree (a volume's host dir, or a VM's staging tree) in a fixed order:
//! depth first, names sorted bytewise, each directory entered before its children and left
//! after them. Symlinks are reported with their target and never followed; sockets, FIFOs and
//! devices are skipped (a FIFO opened with `O_NONBLOCK` cannot block the agent either).
//! [`Copier`] writes what it is shown into a directory the agent owns, [`Fingerprint`] hashes it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};

/// Deeper trees are refused (each level holds a descriptor while its children are visited).
pub const MAX_DEPTH: usize = 128;

/// What a walk shows, entry by entry. `rel` is the path below the walked root.
pub trait Visit {
    /// A directory, before its children.
    fn enter(&mut self, rel: &Path, mode: u32) -> io::Result<()>;
    /// The same directory, after its children.
    fn leave(&mut self, rel: &Path) -> io::Result<()>;
    /// A regular file of `size` bytes (as fstat said on the open descriptor); `data` yields
    /// at most those bytes, and an error when the file shrank meanwhile. A visit that only
    /// wants names need not read it.
    fn file(&mut self, rel: &Path, mode: u32, size: u64, data: &mut dyn Read) -> io::Result<()>;
    fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()>;
    /// Leave this entry out, whatever it is (e.g. another volume is mounted there).
    fn skip(&self, _rel: &Path) -> bool {
        false
    }
}

fn named(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Open the directory `path` (given by the operator: symlinks in it are the operator's own).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(io::Error::from)
        .map_err(named(path.display()))?;
    Ok(fd)
}

/// Visit every entry below the directory `root` (not `root` itself).
pub fn walk(root: BorrowedFd<'_>, visit: &mut dyn Visit) -> io::Result<()> {
    walk_in(root, &mut PathBuf::new(), visit, 0)
}

fn walk_in(dir: BorrowedFd<'_>, rel: &mut PathBuf, visit: &mut dyn Visit, depth: usize) -> io::Result<()> {
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!("{} is nested more than {MAX_DEPTH} directories deep", rel.display())));
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(io::Error::from).map_err(named(rel.display()))? {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    for name in names {
        let name = OsStr::from_bytes(&name);
        rel.push(name);
        let result = visit_entry(dir, name, rel, visit, depth);
        rel.pop();
        result?;
    }
    Ok(())
}

fn visit_entry(dir: BorrowedFd<'_>, name: &OsStr, rel: &mut PathBuf, visit: &mut dyn Visit, depth: usize) -> io::Result<()> {
    if visit.skip(rel) {
        return Ok(());
    }
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        // Removed since the listing: as if it had never been there.
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(named(rel.display())(e.into())),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(io::Error::from).map_err(named(rel.display()))?;
            visit.symlink(rel, target.as_bytes())
        }
        FileType::Directory => {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            // Swapped for a symlink or a file since the stat: ELOOP / ENOTDIR, refused.
            let sub = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(io::Error::from).map_err(named(rel.display()))?;
            let mode = rustix::fs::fstat(&sub).map_err(io::Error::from)?.st_mode;
            visit.enter(rel, mode & 0o7777)?;
            walk_in(sub.as_fd(), rel, visit, depth + 1)?;
            visit.leave(rel)
        }
        FileType::RegularFile => {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(io::Error::from).map_err(named(rel.display()))?;
            let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                // Swapped for a FIFO or a device since the stat: not a file we copy.
                return Ok(());
            }
            let size = st.st_size as u64;
            let mut data = Exact { inner: File::from(fd), left: size, rel };
            visit.file(rel, st.st_mode & 0o7777, size, &mut data)
        }
        _ => Ok(()),
    }
}

/// Exactly `left` bytes of a file: more are never read, fewer are an error.
struct Exact<'a> {
    inner: File,
    left: u64,
    rel: &'a Path,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} shrank while it was read", self.rel.display())));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A content hash of what a walk shows: names, types, modes, bytes and link targets.
pub struct Fingerprint(Sha256);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(Sha256::new())
    }
}

impl Fingerprint {
    /// Mark the start of another tree (a bind, the program...), so trees don't run together.
    pub fn section(&mut self, label: &str) {
        self.0.update(format!("section {label}\n"));
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn hex(self) -> String {
        crate::plan::hex_prefix(&self.0.finalize(), 16)
    }
    fn entry(&mut self, rel: &Path, what: &str) {
        self.0.update(rel.as_os_str().as_bytes());
        self.0.update(format!(" {what}\n"));
    }
}

impl Visit for Fingerprint {
    fn enter(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        self.entry(rel, &format!("{mode:o} dir"));
        Ok(())
    }
    fn leave(&mut self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn file(&mut self, rel: &Path, mode: u32, size: u64, data: &mut dyn Read) -> io::Result<()> {
        self.entry(rel, &format!("{mode:o} file {size}"));
        io::copy(data, &mut self.0)?;
        Ok(())
    }
    fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()> {
        self.entry(rel, "link");
        self.0.update(target);
        self.0.update(b"\n");
        Ok(())
    }
}

/// Writes to `out` and hashes what was written.
struct Tee<'a, W: Write> {
    out: &'a mut W,
    hash: &'a mut Sha256,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The mode a copy gets: setuid and setgid are never carried over to a file the agent writes.
pub fn safe_mode(mode: u32) -> u32 {
    mode & 0o1777
}

/// Writes what a walk shows below a directory the agent owns (and nobody else writes to).
/// Directories are made owner-writable while they are filled and get their mode on leaving.
pub struct Copier {
    /// The directory being filled, and the mode it gets when it is left.
    stack: Vec<(OwnedFd, Option<u32>)>,
    /// Also hashed on the way, when set.
    pub fingerprint: Option<Fingerprint>,
}

impl Copier {
    /// Copy into the directory `dest` (a descriptor of a directory the agent owns).
    pub fn into_dir(dest: OwnedFd) -> Copier {
        Copier { stack: vec![(dest, None)], fingerprint: None }
    }

    fn top(&self) -> BorrowedFd<'_> {
        self.stack.last().expect("the destination stays on the stack").0.as_fd()
    }

    fn name(rel: &Path) -> &OsStr {
        rel.file_name().unwrap_or(rel.as_os_str())
    }

    /// Write `data` (`size` bytes) as the new file `name` in the current directory.
    pub fn write_file(&mut self, name: &OsStr, mode: u32, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.top(), name, flags, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
        let mut out = io::BufWriter::new(File::from(fd));
        let copied = match &mut self.fingerprint {
            Some(fp) => io::copy(data, &mut Tee { out: &mut out, hash: &mut fp.0 })?,
            None => io::copy(data, &mut out)?,
        };
        if copied != size {
            return Err(io::Error::other(format!("{} changed size while it was copied", name.to_string_lossy())));
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        rustix::fs::fchmod(&file, Mode::from_bits_truncate(safe_mode(mode))).map_err(io::Error::from)?;
        Ok(())
    }

    /// Enter (making it when missing) the directory `name` of the current one; `mode` is what
    /// it gets on leaving (None: stays owner-only). Whatever else
    /// is there (a file, or a symlink an earlier tree put there) is replaced: the later tree is
    /// mounted over it, as a container's volume would be.
    pub fn enter_dir(&mut self, name: &OsStr, mode: Option<u32>) -> io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let top = self.top();
        let fd = match rustix::fs::mkdirat(top, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => rustix::fs::openat(top, name, flags, Mode::empty()),
            Err(rustix::io::Errno::EXIST) => match rustix::fs::openat(top, name, flags, Mode::empty()) {
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    rustix::fs::unlinkat(top, name, AtFlags::empty())?;
                    rustix::fs::mkdirat(top, name, Mode::from_bits_truncate(0o700))?;
                    rustix::fs::openat(top, name, flags, Mode::empty())
                }
                other => other,
            },
            Err(e) => Err(e),
        }
        .map_err(io::Error::from)?;
        // Writable while it is filled, also by an agent that is not root.
        rustix::fs::fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(io::Error::from)?;
        self.stack.push((fd, mode));
        Ok(())
    }

    /// Back to the parent directory, giving the one left its mode.
    pub fn leave_dir(&mut self) -> io::Result<()> {
        let (fd, mode) = self.stack.pop().expect("leave after enter");
        if let Some(mode) = mode {
            rustix::fs::fchmod(&fd, Mode::from_bits_truncate(safe_mode(mode))).map_err(io::Error::from)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<Option<Fingerprint>> {
        while self.stack.len() > 1 {
            self.leave_dir()?;
        }
        Ok(self.fingerprint.take())
    }
}

impl Visit for Copier {
    fn enter(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        if let Some(fp) = &mut self.fingerprint {
            fp.enter(rel, mode)?;
        }
        self.enter_dir(Self::name(rel), Some(mode)).map_err(named(rel.display()))
    }
    fn leave(&mut self, rel: &Path) -> io::Result<()> {
        self.leave_dir().map_err(named(rel.display()))
    }
    fn file(&mut self, rel: &Path, mode: u32, size: u64, data: &mut dyn Read) -> io::Result<()> {
        if let Some(fp) = &mut self.fingerprint {
            fp.entry(rel, &format!("{mode:o} file {size}"));
        }
        self.write_file(Self::name(rel), mode, size, data).map_err(named(rel.display()))
    }
    fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()> {
        if let Some(fp) = &mut self.fingerprint {
            fp.symlink(rel, target)?;
        }
        rustix::fs::symlinkat(target, self.top(), Self::name(rel)).map_err(io::Error::from).map_err(named(rel.display()))
    }
}

/// Remove the entry `name` of `dir` and everything below it, never following a symlink.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR | rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    // Owner-writable, so that a read-only copy can be emptied by an agent that is not root.
    let _ = rustix::fs::fchmod(&sub, Mode::from_bits_truncate(0o700));
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_tree(sub.as_fd(), OsStr::from_bytes(&n))?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Remove `path` and everything below it (its parent is the agent's own), following no
/// symlink in it.
pub fn remove(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!("{} has no parent", path.display())));
    };
    remove_tree(open_dir(parent)?.as_fd(), name).map_err(named(path.display()))
}

/// A fresh, empty, owner-only directory `path` (its parent is the agent's own): what was
/// there before is removed without following any symlink in it.
pub fn fresh_dir(path: &Path) -> io::Result<OwnedFd> {
    let parent = path.parent().ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?;
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))?;
    let parent = open_dir(parent)?;
    remove_tree(parent.as_fd(), name).map_err(named(path.display()))?;
    rustix::fs::mkdirat(&parent, name, Mode::from_bits_truncate(0o700)).map_err(io::Error::from).map_err(named(path.display()))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(&parent, name, flags, Mode::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// Records what a walk shows, as lines.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl Visit for Log {
        fn enter(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
            self.0.push(format!("enter {} {mode:o}", rel.display()));
            Ok(())
        }
        fn leave(&mut self, rel: &Path) -> io::Result<()> {
            self.0.push(format!("leave {}", rel.display()));
            Ok(())
        }
        fn file(&mut self, rel: &Path, _: u32, size: u64, data: &mut dyn Read) -> io::Result<()> {
            let mut s = String::new();
            data.read_to_string(&mut s)?;
            self.0.push(format!("file {} {size} {s:?}", rel.display()));
            Ok(())
        }
        fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()> {
            self.0.push(format!("link {} -> {}", rel.display(), String::from_utf8_lossy(target)));
            Ok(())
        }
        fn skip(&self, rel: &Path) -> bool {
            rel == Path::new("skipme")
        }
    }

    #[test]
    fn walk_order_types_and_skips() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("a"), "A").unwrap();
        fs::write(root.join("b/c/d"), "D").unwrap();
        fs::set_permissions(root.join("b/c"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("b/link")).unwrap();
        fs::write(root.join("skipme"), "no").unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::from_bits_truncate(0o600), 0).unwrap();
        let mut log = Log::default();
        walk(open_dir(root).unwrap().as_fd(), &mut log).unwrap();
        assert_eq!(
            log.0,
            vec![
                "file a 1 \"A\"",
                "enter b 755",
                "enter b/c 750",
                "file b/c/d 1 \"D\"",
                "leave b/c",
                "link b/link -> /etc/shadow",
                "leave b",
            ]
        );
    }

    #[test]
    fn copier_keeps_links_as_links_strips_setuid_and_replaces_what_blocks_a_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), "data").unwrap();
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o6755)).unwrap();
        fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o555)).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("mnt")).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("out")).unwrap();

        let dest = dir.path().join("dest");
        let mut copier = Copier::into_dir(fresh_dir(&dest).unwrap());
        copier.fingerprint = Some(Fingerprint::default());
        walk(open_dir(&src).unwrap().as_fd(), &mut copier).unwrap();
        // A second tree mounted at "mnt" and at "out/x": the symlinks the first one left
        // there are replaced by directories; nothing is written through them.
        copier.enter_dir(OsStr::new("mnt"), None).unwrap();
        copier.write_file(OsStr::new("inner"), 0o644, 2, &mut &b"in"[..]).unwrap();
        copier.leave_dir().unwrap();
        copier.enter_dir(OsStr::new("out"), None).unwrap();
        copier.enter_dir(OsStr::new("x"), None).unwrap();
        copier.write_file(OsStr::new("y"), 0o644, 1, &mut &b"y"[..]).unwrap();
        let fp = copier.finish().unwrap().unwrap().hex();

        assert_eq!(fs::read_to_string(dest.join("d/f")).unwrap(), "data");
        assert_eq!(fs::metadata(dest.join("d/f")).unwrap().permissions().mode() & 0o7777, 0o755, "setuid/setgid dropped");
        assert_eq!(fs::metadata(dest.join("d")).unwrap().permissions().mode() & 0o7777, 0o555);
        assert!(fs::symlink_metadata(dest.join("mnt")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(dest.join("mnt/inner")).unwrap(), "in");
        assert!(fs::symlink_metadata(dest.join("out")).unwrap().is_dir());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the symlink");
        assert!(!Path::new("/etc/inner").exists());

        // The fingerprint taken while copying equals a walk of the same source.
        let mut again = Fingerprint::default();
        walk(open_dir(&src).unwrap().as_fd(), &mut again).unwrap();
        let mut copied_only = Copier::into_dir(fresh_dir(&dest).unwrap());
        copied_only.fingerprint = Some(Fingerprint::default());
        walk(open_dir(&src).unwrap().as_fd(), &mut copied_only).unwrap();
        assert_eq!(copied_only.finish().unwrap().unwrap().hex(), again.hex());
        assert_ne!(fp.len(), 0);

        // fresh_dir empties a tree with read-only dirs and links without following them.
        fs::write(outside.join("keep"), "k").unwrap();
        fresh_dir(&dest).unwrap();
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn fingerprint_sees_content_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("f"), "1").unwrap();
        let fp = || {
            let mut f = Fingerprint::default();
            walk(open_dir(root).unwrap().as_fd(), &mut f).unwrap();
            f.hex()
        };
        let a = fp();
        assert_eq!(a, fp(), "stable");
        fs::write(root.join("f"), "2").unwrap();
        let b = fp();
        assert_ne!(a, b, "content");
        fs::set_permissions(root.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        let c = fp();
        assert_ne!(b, c, "mode");
        std::os::unix::fs::symlink("f", root.join("l")).unwrap();
        assert_ne!(c, fp(), "links");
    }
}
