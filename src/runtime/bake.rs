//! Baking volumes into a VM: a VM has no host mounts, so each volume host dir is copied into a
//! per-VM staging tree that mirrors the guest paths, and (kernel form) packed as a newc cpio
//! archive appended to the initrd. Linux unpacks concatenated archives, later files replacing
//! earlier ones, provided the appended one starts 4-byte aligned.
//!
//! [`content_hash`] fingerprints the volume dirs so that a redeploy re-bakes only when their
//! contents changed.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::plan::{binds, Bind};

/// Stable fingerprint of the bind dirs' contents (names, types, modes, bytes, link targets).
pub fn content_hash(binds: &[Bind]) -> io::Result<String> {
    let mut h = Sha256::new();
    for b in binds {
        h.update(format!("bind {} -> {}\n", b.host.display(), b.guest.display()));
        let meta = fs::metadata(&b.host)
            .map_err(|e| io::Error::new(e.kind(), format!("volume host dir {}: {e}", b.host.display())))?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!("volume host path {} is not a directory", b.host.display())));
        }
        for (rel, path, meta) in walk(&b.host)? {
            let kind = meta.file_type();
            h.update(format!("{} {:o} ", rel.display(), meta.mode() & 0o7777));
            if kind.is_symlink() {
                h.update(format!("link {}\n", fs::read_link(&path)?.display()));
            } else if kind.is_dir() {
                h.update("dir\n");
            } else {
                h.update(format!("file {}\n", meta.len()));
                let mut f = fs::File::open(&path)?;
                io::copy(&mut f, &mut h)?;
            }
        }
    }
    Ok(crate::plan::hex_prefix(&h.finalize(), 16))
}

/// Every entry under `root` (not root itself), parents before children, sorted by name;
/// symlinks are not followed. Sockets, fifos and devices are skipped.
fn walk(root: &Path) -> io::Result<Vec<(PathBuf, PathBuf, fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        let mut dirs = Vec::new();
        for e in names {
            let meta = fs::symlink_metadata(e.path())?;
            let t = meta.file_type();
            if !(t.is_file() || t.is_dir() || t.is_symlink()) {
                continue;
            }
            let r = rel.join(e.file_name());
            if t.is_dir() {
                dirs.push(r.clone());
            }
            out.push((r, e.path(), meta));
        }
        // Depth-first in name order: push in reverse so the first name is walked first.
        stack.extend(dirs.into_iter().rev());
    }
    Ok(out)
}

/// Copy each bind's host dir to `staging/<guest path>` (symlinks kept as links, modes kept).
pub fn stage(binds: &[Bind], staging: &Path) -> io::Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging)?;
    }
    fs::create_dir_all(staging)?;
    for b in binds {
        let target = staging.join(b.guest.strip_prefix("/").unwrap_or(&b.guest));
        fs::create_dir_all(&target)?;
        for (rel, path, meta) in walk(&b.host)? {
            let dest = target.join(&rel);
            let t = meta.file_type();
            if t.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&path)?, &dest)?;
            } else if t.is_dir() {
                fs::create_dir_all(&dest)?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            } else {
                fs::copy(&path, &dest)?;
            }
        }
    }
    Ok(())
}

/// The newc header of one entry (name without a leading '/', NUL-terminated and padded).
pub fn newc_header(ino: u32, mode: u32, size: u32, name: &str) -> Vec<u8> {
    let namesize = name.len() as u32 + 1;
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0];
    let mut out = b"070701".to_vec();
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(&mut out);
    out
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

/// Pack `root` (a staging tree) as a newc archive: every parent dir, then its entries, and
/// `extra` files (guest path, mode, bytes) such as the environment; ends with the trailer.
pub fn pack(root: &Path, extra: &[(&str, u32, Vec<u8>)], out: &mut dyn Write) -> io::Result<u64> {
    let mut written = 0u64;
    let mut ino = 1u32;
    let mut emit = |out: &mut dyn Write, mode: u32, name: &str, data: &mut dyn Read, size: u32| -> io::Result<()> {
        let header = newc_header(ino, mode, size, name);
        ino += 1;
        out.write_all(&header)?;
        let copied = io::copy(&mut data.take(size as u64), out)?;
        if copied != size as u64 {
            return Err(io::Error::other(format!("{name} changed while it was packed")));
        }
        let pad = (4 - (size as usize % 4)) % 4;
        out.write_all(&[0u8; 3][..pad])?;
        written += header.len() as u64 + size as u64 + pad as u64;
        Ok(())
    };
    let mut dirs_done: Vec<PathBuf> = Vec::new();
    // walk() already gives every dir before its entries, as the archive needs.
    let entries = if root.exists() { walk(root)? } else { Vec::new() };
    for (rel, path, meta) in &entries {
        let name = rel.to_string_lossy().into_owned();
        let t = meta.file_type();
        let perm = meta.mode() & 0o7777;
        if t.is_dir() {
            emit(out, 0o040000 | perm, &name, &mut io::empty(), 0)?;
            dirs_done.push(rel.clone());
        } else if t.is_symlink() {
            let target = fs::read_link(path)?.to_string_lossy().into_owned().into_bytes();
            emit(out, 0o120000 | 0o777, &name, &mut target.as_slice(), target.len() as u32)?;
        } else {
            let size = u32::try_from(meta.len()).map_err(|_| io::Error::other(format!("{name} is too large for a cpio archive")))?;
            emit(out, 0o100000 | perm, &name, &mut fs::File::open(path)?, size)?;
        }
    }
    for (guest, mode, data) in extra {
        let rel = guest.trim_start_matches('/');
        let mut parent = PathBuf::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            parent.push(p);
            if !dirs_done.contains(&parent) {
                emit(out, 0o040755, &parent.to_string_lossy(), &mut io::empty(), 0)?;
                dirs_done.push(parent.clone());
            }
        }
        emit(out, 0o100000 | mode, rel, &mut data.as_slice(), data.len() as u32)?;
    }
    emit(out, 0, "TRAILER!!!", &mut io::empty(), 0)?;
    Ok(written)
}

/// Write `base` (the component's initrd, if any) padded with zeros to a multiple of 4, then
/// the archive of `staging` + `extra`, to `dest`.
pub fn initrd_with(base: Option<&Path>, staging: &Path, extra: &[(&str, u32, Vec<u8>)], dest: &Path) -> io::Result<()> {
    let tmp = dest.with_extension("tmp");
    {
        let mut out = io::BufWriter::new(fs::File::create(&tmp)?);
        let mut len = 0u64;
        if let Some(b) = base {
            len = io::copy(&mut fs::File::open(b).map_err(|e| io::Error::new(e.kind(), format!("initrd {}: {e}", b.display())))?, &mut out)?;
        }
        let pad = (4 - (len % 4) as usize) % 4;
        out.write_all(&[0u8; 3][..pad])?;
        pack(staging, extra, &mut out)?;
        out.flush()?;
    }
    fs::rename(tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_header_exact() {
        let h = newc_header(1, 0o100644, 5, "a/b");
        let text = String::from_utf8(h.clone()).unwrap();
        assert!(text.starts_with("07070100000001000081a4000000000000000000000001000000000000000500000000"), "{text}");
        // 110 header bytes + "a/b\0" = 114, padded to 116.
        assert_eq!(h.len(), 116);
        assert_eq!(&h[110..114], b"a/b\0");
    }

    #[test]
    fn stage_pack_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("www");
        fs::create_dir_all(host.join("sub")).unwrap();
        fs::write(host.join("index.html"), "v1\n").unwrap();
        fs::write(host.join("sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("index.html", host.join("link")).unwrap();
        let b = vec![Bind { host: host.clone(), guest: "/srv/www".into() }];
        let h1 = content_hash(&b).unwrap();
        assert_eq!(h1, content_hash(&b).unwrap(), "stable");
        fs::write(host.join("index.html"), "v2\n").unwrap();
        let h2 = content_hash(&b).unwrap();
        assert_ne!(h1, h2, "contents count");
        assert!(content_hash(&[Bind { host: dir.path().join("nope"), guest: "/x".into() }]).is_err());

        let staging = dir.path().join("staging");
        stage(&b, &staging).unwrap();
        assert_eq!(fs::read_to_string(staging.join("srv/www/index.html")).unwrap(), "v2\n");
        assert_eq!(fs::read_link(staging.join("srv/www/link")).unwrap(), PathBuf::from("index.html"));

        let base = dir.path().join("base.img");
        fs::write(&base, b"12345").unwrap();
        let out = dir.path().join("initrd.img");
        initrd_with(Some(&base), &staging, &[("/etc/mcp/env", 0o600, b"A=1\n".to_vec())], &out).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(&bytes[..5], b"12345");
        assert_eq!(&bytes[5..8], &[0, 0, 0], "padded to 4");
        assert_eq!(&bytes[8..14], b"070701", "archive starts aligned");
        let text = String::from_utf8_lossy(&bytes);
        for name in ["srv\0", "srv/www\0", "srv/www/index.html\0", "srv/www/sub/x\0", "etc/mcp/env\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name} missing");
        }
        assert_eq!(bytes.len() % 4, 0);
        // busybox can read what we wrote.
        if let Ok(bb) = which::which("busybox") {
            let listing = std::process::Command::new(bb)
                .args(["cpio", "-t"])
                .stdin(fs::File::open(&out).map(|mut f| {
                    let mut skip = [0u8; 8];
                    f.read_exact(&mut skip).unwrap();
                    f
                }).unwrap())
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&listing.stdout);
            assert!(names.contains("srv/www/index.html") && names.contains("etc/mcp/env"), "{names}");
        }
    }
}
