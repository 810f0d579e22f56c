//! `/etc/ld.so.cache` as the dynamic loader reads it: library name -> path, for x86-64 libc6
//! libraries. Only glibc's current format (`glibc-ld.so.cache1.1`, what ldconfig has written
//! since glibc 2.32, alone or after the old format's entries) is read; anything else is
//! treated as no cache, and the loader's default directories are searched instead.

/// `glibc-ld.so.cache` + version `1.1`.
const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// magic(17) version(3) nlibs(4) len_strings(4) flags(1) pad(3) extension_offset(4) unused(12).
const HEADER: usize = 48;
/// flags(4) key(4) value(4) osversion(4) hwcap(8).
const ENTRY: usize = 24;
/// FLAG_ELF_LIBC6 | FLAG_X8664_LIB64: what an x86-64 program's loader accepts.
const X86_64_LIBC6: i32 = 0x0303;
/// The old format's magic, which may come first.
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";

/// The libraries a cache names, in the cache's order (the loader takes the first match).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LdCache {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn cstr_at(b: &[u8], at: usize) -> Option<&[u8]> {
    let rest = b.get(at..)?;
    Some(&rest[..rest.iter().position(|&c| c == 0)?])
}

impl LdCache {
    /// Parse a cache file's bytes; None when it is not a cache this code understands.
    pub fn parse(bytes: &[u8]) -> Option<LdCache> {
        let start = if bytes.starts_with(MAGIC) {
            0
        } else if bytes.starts_with(OLD_MAGIC) {
            // Old header: magic(11) pad(1) nlibs(4), entries of 12 bytes; the new one follows,
            // 8-byte aligned.
            let n = u32_at(bytes, 12)? as usize;
            let after = 16usize.checked_add(n.checked_mul(12)?)?;
            let aligned = after.checked_add(7)? & !7;
            if !bytes.get(aligned..)?.starts_with(MAGIC) {
                return None;
            }
            aligned
        } else {
            return None;
        };
        let new = &bytes[start..];
        let nlibs = u32_at(new, 20)? as usize;
        let mut entries = Vec::new();
        for i in 0..nlibs {
            let at = HEADER.checked_add(i.checked_mul(ENTRY)?)?;
            let flags = u32_at(new, at)? as i32;
            let (key, value) = (u32_at(new, at + 4)? as usize, u32_at(new, at + 8)? as usize);
            if flags != X86_64_LIBC6 {
                continue;
            }
            // String offsets count from the start of the new format's header.
            entries.push((cstr_at(new, key)?.to_vec(), cstr_at(new, value)?.to_vec()));
        }
        Some(LdCache { entries })
    }

    /// Where the loader finds `name` through the cache.
    pub fn lookup(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache with the given (flags, name, path) entries, as ldconfig lays it out.
    pub fn build(entries: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut strings: Vec<u8> = Vec::new();
        let strings_at = HEADER + entries.len() * ENTRY;
        let mut table = Vec::new();
        for (flags, k, v) in entries {
            let key = strings_at + strings.len();
            strings.extend_from_slice(k.as_bytes());
            strings.push(0);
            let value = strings_at + strings.len();
            strings.extend_from_slice(v.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&(key as u32).to_le_bytes());
            table.extend_from_slice(&(value as u32).to_le_bytes());
            table.extend_from_slice(&[0u8; 12]);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        assert_eq!(out.len(), HEADER);
        out.extend(table);
        out.extend(strings);
        out
    }

    #[test]
    fn parses_x86_64_entries_in_order_and_skips_others() {
        let bytes = build(&[
            (0x0003, "libc.so.6", "/lib/i386-linux-gnu/libc.so.6"),
            (X86_64_LIBC6, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            (X86_64_LIBC6, "libc.so.6", "/usr/local/lib/libc.so.6"),
            (X86_64_LIBC6, "libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
        ]);
        let c = LdCache::parse(&bytes).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(b"libc.so.6"), Some(&b"/lib/x86_64-linux-gnu/libc.so.6"[..]));
        assert_eq!(c.lookup(b"libz.so.1"), Some(&b"/lib/x86_64-linux-gnu/libz.so.1"[..]));
        assert_eq!(c.lookup(b"libm.so.6"), None);
        assert_eq!(LdCache::parse(b"not a cache"), None);
        // Truncated: offsets past the end are refused, not read.
        assert_eq!(LdCache::parse(&bytes[..HEADER + 10]), None);
    }

    #[test]
    fn reads_this_machines_cache() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else { return };
        let c = LdCache::parse(&bytes).expect("this machine's cache parses");
        assert!(c.lookup(b"libc.so.6").is_some_and(|p| p.ends_with(b"/libc.so.6")), "{c:?}");
    }
}
