//! Baking: a VM has no host mounts, so what it needs from the node (its volume dirs, and for a
//! Nanos program its ELF and libraries) is copied into a per-VM staging tree that mirrors the
//! guest's paths, then packed for the boot form: an archive appended to the initrd
//! ([`cpio`], kernel form), or a Nanos image built by the toolchain's mkfs ([`nanos`]).
//!
//! A volume's content belongs to whoever runs in it, and the agent is root: volume dirs are
//! read only through [`tree`] (descriptor-relative, no symlink followed, types and sizes
//! checked on the open descriptor), and the staging tree is written the same way. The
//! fingerprint that makes a changed file a new spec is taken over exactly what is copied.

pub mod cpio;
pub mod elf;
pub mod ldcache;
pub mod nanos;
pub mod ops;
pub mod tree;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::plan::Bind;
use elf::GuestFile;
use tree::{Copier, Fingerprint, Visit};

/// Everything a guest's file tree is made of: volume dirs at their guest paths, then single
/// files (a program and its libraries) at theirs.
#[derive(Debug, Clone, Default)]
pub struct GuestTree {
    /// In the order they are laid down: shallower mount points first; of two at the same
    /// path, the later one in the component's list wins (as a later mount would).
    binds: Vec<Bind>,
    files: Vec<GuestFile>,
}

/// Does `inner` lie at or below `outer` (both absolute, compared by components)?
fn within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

impl GuestTree {
    /// The tree for these volumes and files; a file that would land inside a volume (or a
    /// volume inside a file) is an error naming both.
    pub fn new(binds: Vec<Bind>, files: Vec<GuestFile>) -> Result<GuestTree, String> {
        for f in &files {
            for b in &binds {
                if within(&f.guest, &b.guest) || within(&b.guest, &f.guest) {
                    return Err(format!(
                        "volume {}:{} collides with {} at {} in the guest; mount the volume elsewhere",
                        b.host.display(),
                        b.guest.display(),
                        f.host.display(),
                        f.guest.display()
                    ));
                }
            }
        }
        let mut order: Vec<(usize, Bind)> = binds.into_iter().enumerate().collect();
        order.sort_by_key(|(i, b)| (b.guest.components().count(), *i));
        Ok(GuestTree { binds: order.into_iter().map(|(_, b)| b).collect(), files })
    }

    /// What bind `i` leaves out: the mount points of binds below it, or all of it when a
    /// later bind has the same mount point.
    fn hidden(&self, i: usize) -> Option<Vec<PathBuf>> {
        let me = &self.binds[i].guest;
        if self.binds[i + 1..].iter().any(|b| &b.guest == me) {
            return None;
        }
        Some(
            self.binds
                .iter()
                .filter(|b| &b.guest != me && within(&b.guest, me))
                .filter_map(|b| b.guest.strip_prefix(me).ok().map(Path::to_path_buf))
                .collect(),
        )
    }

    /// The fingerprint of the whole tree as [`GuestTree::stage`] would copy it now.
    pub fn fingerprint(&self) -> io::Result<String> {
        let mut fp = Fingerprint::default();
        self.each_bind(|_, root, hidden, section| {
            fp.section(&section);
            tree::walk(root, &mut Hiding { inner: &mut fp, hidden })
        })?;
        for f in &self.files {
            hash_file(&mut fp, f);
        }
        Ok(fp.hex())
    }

    /// Copy the tree into `staging` (made afresh, owner-only); returns the fingerprint of what
    /// was copied.
    pub fn stage(&self, staging: &Path) -> io::Result<String> {
        let mut copier = Copier::into_dir(tree::fresh_dir(staging)?);
        copier.fingerprint = Some(Fingerprint::default());
        self.each_bind(|bind, root, hidden, section| {
            copier.fingerprint.as_mut().expect("set above").section(&section);
            let depth = enter_path(&mut copier, &bind.guest)?;
            tree::walk(root, &mut Hiding { inner: &mut copier, hidden })?;
            for _ in 0..depth {
                copier.leave_dir()?;
            }
            Ok(())
        })?;
        for f in &self.files {
            hash_file(copier.fingerprint.as_mut().expect("set above"), f);
            let parent = f.guest.parent().unwrap_or(Path::new("/"));
            let depth = enter_path(&mut copier, parent)?;
            let name = f.guest.file_name().unwrap_or(OsStr::new("program"));
            // Unhashed: hash_file above took it already.
            let fp = copier.fingerprint.take();
            let wrote = copier.write_file(name, f.mode, f.bytes.len() as u64, &mut f.bytes.as_slice());
            copier.fingerprint = fp;
            wrote.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.guest.display())))?;
            for _ in 0..depth {
                copier.leave_dir()?;
            }
        }
        Ok(copier.finish()?.expect("set above").hex())
    }

    /// Each bind that is not wholly hidden, with its host dir opened, what it leaves out, and
    /// its fingerprint section.
    fn each_bind(&self, mut f: impl FnMut(&Bind, BorrowedFd<'_>, &[PathBuf], String) -> io::Result<()>) -> io::Result<()> {
        for (i, b) in self.binds.iter().enumerate() {
            let Some(hidden) = self.hidden(i) else { continue };
            let root = tree::open_dir(&b.host).map_err(|e| io::Error::new(e.kind(), format!("volume host dir {e}")))?;
            f(b, root.as_fd(), &hidden, format!("bind {} -> {}", b.host.display(), b.guest.display()))?;
        }
        Ok(())
    }
}

fn hash_file(fp: &mut Fingerprint, f: &GuestFile) {
    fp.section(&format!("file {} {:o} {}", f.guest.display(), f.mode, f.bytes.len()));
    fp.update(&f.bytes);
}

/// Enter (making them) the directories of the absolute guest path `p`; returns how many.
fn enter_path(copier: &mut Copier, p: &Path) -> io::Result<usize> {
    let mut depth = 0;
    for c in p.components() {
        if let std::path::Component::Normal(name) = c {
            copier.enter_dir(name, None)?;
            depth += 1;
        }
    }
    Ok(depth)
}

/// A visit that leaves out the given paths (other volumes are mounted there).
struct Hiding<'a, V: Visit> {
    inner: &'a mut V,
    hidden: &'a [PathBuf],
}

impl<V: Visit> Visit for Hiding<'_, V> {
    fn enter(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        self.inner.enter(rel, mode)
    }
    fn leave(&mut self, rel: &Path) -> io::Result<()> {
        self.inner.leave(rel)
    }
    fn file(&mut self, rel: &Path, mode: u32, size: u64, data: &mut dyn io::Read) -> io::Result<()> {
        self.inner.file(rel, mode, size, data)
    }
    fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()> {
        self.inner.symlink(rel, target)
    }
    fn skip(&self, rel: &Path) -> bool {
        self.hidden.iter().any(|h| h == rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn bind(host: &Path, guest: &str) -> Bind {
        Bind { host: host.to_path_buf(), guest: guest.into() }
    }

    #[test]
    fn nested_volumes_mount_over_what_the_outer_one_has_there() {
        let dir = tempfile::tempdir().unwrap();
        let (outer, inner, victim) = (dir.path().join("outer"), dir.path().join("inner"), dir.path().join("victim"));
        for d in [&outer, &inner, &victim] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(victim.join("precious"), "keep me").unwrap();
        // The outer volume's owner put a symlink where the inner volume is mounted, and one
        // to the inner volume's own guest path's parent.
        std::os::unix::fs::symlink(&victim, outer.join("data")).unwrap();
        fs::create_dir_all(outer.join("etc")).unwrap();
        fs::write(outer.join("etc/conf"), "outer").unwrap();
        fs::write(inner.join("precious"), "").unwrap();
        fs::write(inner.join("new"), "inner").unwrap();
        // Listed inner first: the order of mounting does not depend on it.
        let t = GuestTree::new(vec![bind(&inner, "/srv/data"), bind(&outer, "/srv")], vec![]).unwrap();
        let staging = dir.path().join("staging");
        let staged = t.stage(&staging).unwrap();
        assert_eq!(staged, t.fingerprint().unwrap(), "the fingerprint is of what was copied");
        assert_eq!(fs::read_to_string(victim.join("precious")).unwrap(), "keep me", "no host file written or truncated");
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 1);
        assert!(fs::symlink_metadata(staging.join("srv/data")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(staging.join("srv/data/new")).unwrap(), "inner");
        assert_eq!(fs::read_to_string(staging.join("srv/etc/conf")).unwrap(), "outer");
        // A change in either volume changes the fingerprint.
        fs::write(inner.join("new"), "inner 2").unwrap();
        assert_ne!(t.fingerprint().unwrap(), staged);
    }

    #[test]
    fn files_land_at_their_guest_paths_and_may_not_collide_with_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir_all(&vol).unwrap();
        fs::write(vol.join("a"), "a").unwrap();
        let prog = GuestFile { guest: "/srv/bin/app".into(), host: "/node/app".into(), mode: 0o755, bytes: b"\x7fELF".to_vec() };
        let t = GuestTree::new(vec![bind(&vol, "/srv/www")], vec![prog.clone()]).unwrap();
        let staging = dir.path().join("staging");
        assert_eq!(t.stage(&staging).unwrap(), t.fingerprint().unwrap());
        assert_eq!(fs::read(staging.join("srv/bin/app")).unwrap(), b"\x7fELF");
        assert_eq!(fs::read_to_string(staging.join("srv/www/a")).unwrap(), "a");
        let e = GuestTree::new(vec![bind(&vol, "/srv")], vec![prog.clone()]).unwrap_err();
        assert!(e.contains("collides with /node/app at /srv/bin/app"), "{e}");
        let e = GuestTree::new(vec![bind(&vol, "/srv/bin/app/x")], vec![prog]).unwrap_err();
        assert!(e.contains("collides"), "{e}");
        let e = GuestTree::new(vec![bind(&dir.path().join("missing"), "/x")], vec![]).unwrap().fingerprint().unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
