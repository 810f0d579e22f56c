//! The kernel form's baking: the staging tree packed as a newc cpio archive appended to the
//! component's initrd. Linux unpacks concatenated archives, later files replacing earlier
//! ones, provided the appended one starts 4-byte aligned (shared/ENVIRONMENT.md).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::tree::{self, Visit};

/// The newc header of one entry (name without a leading '/', NUL-terminated and padded).
pub fn newc_header(ino: u32, mode: u32, size: u32, name: &[u8]) -> Vec<u8> {
    let namesize = name.len() as u32 + 1;
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0];
    let mut out = b"070701".to_vec();
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name);
    out.push(0);
    pad4(&mut out);
    out
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

/// Writes archive entries as a walk of the staging tree shows them.
struct Packer<'a> {
    out: &'a mut dyn Write,
    ino: u32,
    /// Directories already in the archive (for the parents of extra files).
    dirs: Vec<Vec<u8>>,
}

impl Packer<'_> {
    fn emit(&mut self, mode: u32, name: &[u8], data: &mut dyn Read, size: u64) -> io::Result<()> {
        let size32 = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{} is too large for a cpio archive", String::from_utf8_lossy(name))))?;
        let header = newc_header(self.ino, mode, size32, name);
        self.ino += 1;
        self.out.write_all(&header)?;
        let copied = io::copy(&mut data.take(size), self.out)?;
        if copied != size {
            return Err(io::Error::other(format!("{} changed while it was packed", String::from_utf8_lossy(name))));
        }
        let pad = (4 - (size as usize % 4)) % 4;
        self.out.write_all(&[0u8; 3][..pad])
    }
}

impl Visit for Packer<'_> {
    fn enter(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        let name = rel.as_os_str().as_bytes();
        self.dirs.push(name.to_vec());
        self.emit(0o040000 | mode, name, &mut io::empty(), 0)
    }
    fn leave(&mut self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn file(&mut self, rel: &Path, mode: u32, size: u64, data: &mut dyn Read) -> io::Result<()> {
        self.emit(0o100000 | mode, rel.as_os_str().as_bytes(), data, size)
    }
    fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()> {
        self.emit(0o120000 | 0o777, rel.as_os_str().as_bytes(), &mut &target[..], target.len() as u64)
    }
}

/// Pack `root` (a staging tree) as a newc archive: every dir before its entries, then `extra`
/// files (guest path, mode, bytes) such as the environment; ends with the trailer.
pub fn pack(root: &Path, extra: &[(&str, u32, Vec<u8>)], out: &mut dyn Write) -> io::Result<()> {
    let mut p = Packer { out, ino: 1, dirs: Vec::new() };
    tree::walk(tree::open_dir(root)?.as_fd(), &mut p)?;
    for (guest, mode, data) in extra {
        let rel = guest.trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        let mut parent = String::new();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if !p.dirs.iter().any(|d| d == parent.as_bytes()) {
                p.emit(0o040755, parent.as_bytes(), &mut io::empty(), 0)?;
                p.dirs.push(parent.as_bytes().to_vec());
            }
        }
        p.emit(0o100000 | mode, rel.as_bytes(), &mut data.as_slice(), data.len() as u64)?;
    }
    p.emit(0, b"TRAILER!!!", &mut io::empty(), 0)
}

/// Write `base` (the component's initrd, if any) padded with zeros to a multiple of 4, then
/// the archive of `staging` + `extra`, to `dest` (owner-only: `extra` may hold secrets).
pub fn initrd_with(base: Option<&Path>, staging: &Path, extra: &[(&str, u32, Vec<u8>)], dest: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dest.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    {
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut out = io::BufWriter::new(file);
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn newc_header_exact() {
        let h = newc_header(1, 0o100644, 5, b"a/b");
        let text = String::from_utf8(h.clone()).unwrap();
        assert!(text.starts_with("07070100000001000081a4000000000000000000000001000000000000000500000000"), "{text}");
        // 110 header bytes + "a/b\0" = 114, padded to 116.
        assert_eq!(h.len(), 116);
        assert_eq!(&h[110..114], b"a/b\0");
    }

    #[test]
    fn initrd_appends_an_aligned_archive_busybox_reads() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        fs::create_dir_all(staging.join("srv/www/sub")).unwrap();
        fs::write(staging.join("srv/www/index.html"), "v2\n").unwrap();
        fs::write(staging.join("srv/www/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("index.html", staging.join("srv/www/link")).unwrap();
        let base = dir.path().join("base.img");
        fs::write(&base, b"12345").unwrap();
        let out = dir.path().join("initrd.img");
        initrd_with(Some(&base), &staging, &[("/etc/mcp/env", 0o600, b"A=1\n".to_vec())], &out).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "the env is in it");
        let bytes = fs::read(&out).unwrap();
        assert_eq!(&bytes[..5], b"12345");
        assert_eq!(&bytes[5..8], &[0, 0, 0], "padded to 4");
        assert_eq!(&bytes[8..14], b"070701", "archive starts aligned");
        let text = String::from_utf8_lossy(&bytes);
        for name in ["srv\0", "srv/www\0", "srv/www/index.html\0", "srv/www/sub/x\0", "etc\0", "etc/mcp/env\0", "TRAILER!!!\0"] {
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
            assert!(names.contains("srv/www/index.html") && names.contains("srv/www/link") && names.contains("etc/mcp/env"), "{names}");
        }
    }
}
