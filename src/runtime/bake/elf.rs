//! What a program needs in a Nanos guest: the program itself, and for a dynamically linked ELF
//! its interpreter (PT_INTERP) and every library it needs (DT_NEEDED, recursively), found the
//! way glibc's loader would find them on this node: DT_RPATH (when there is no DT_RUNPATH),
//! DT_RUNPATH, /etc/ld.so.cache, then the default directories; `$ORIGIN` expanded. Each file
//! goes into the guest at the path the loader will open there, and /etc/ld.so.cache with
//! them when the node has one.
//!
//! Each file is opened once and read through that descriptor (type and size checked on it);
//! what is copied is what was parsed. Paths here are the operator's (`program`) or the
//! system's (libraries); a candidate that is not an x86-64 ELF of the right kind is passed over,
//! as the loader does, so no other kind of file can be pulled in under a library's name.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use goblin::elf::header::{EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::Elf;

use super::ldcache::LdCache;

/// Programs and libraries larger than this are refused (read into memory once).
pub const MAX_SIZE: u64 = 1 << 30;
/// The loader's default directories for x86-64 (Debian's multiarch ones first).
pub const DEFAULT_DIRS: &[&str] =
    &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
pub const LD_CACHE: &str = "/etc/ld.so.cache";

/// One file for the guest, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Where it goes in the guest (absolute).
    pub guest: PathBuf,
    /// Where it was read from on the node (as named, before any symlink).
    pub host: PathBuf,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// A program and everything its loader will open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub program: GuestFile,
    /// Its PT_INTERP (dynamic ELFs only).
    pub interpreter: Option<GuestFile>,
    /// In the order the loader finds them (breadth first).
    pub libraries: Vec<GuestFile>,
    /// The node's ld.so.cache, for a dynamic ELF when the node has one.
    pub ld_cache: Option<GuestFile>,
}

impl Closure {
    /// Every file, program first.
    pub fn files(&self) -> impl Iterator<Item = &GuestFile> {
        std::iter::once(&self.program).chain(self.interpreter.iter()).chain(self.libraries.iter()).chain(self.ld_cache.iter())
    }

    pub fn is_dynamic(&self) -> bool {
        self.interpreter.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is {why}")]
    Unusable { what: &'static str, path: PathBuf, why: String },
    #[error("library {name} (needed by {needed_by}) was not found; searched {searched}")]
    LibraryMissing { name: String, needed_by: PathBuf, searched: String },
    #[error("{path} needs more than 256 libraries")]
    TooMany { path: PathBuf },
}

/// Where libraries are looked up: the node's cache and default directories.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    cache: Option<(LdCache, GuestFile)>,
    default_dirs: Vec<PathBuf>,
}

impl Loader {
    /// This node's loader: /etc/ld.so.cache (when it parses) and the default directories.
    pub fn system() -> Loader {
        Loader::with(Some(Path::new(LD_CACHE)), DEFAULT_DIRS.iter().map(PathBuf::from).collect())
    }

    pub fn with(cache: Option<&Path>, default_dirs: Vec<PathBuf>) -> Loader {
        let cache = cache.and_then(|p| {
            let (bytes, mode) = read_checked(p).ok()?;
            let parsed = LdCache::parse(&bytes)?;
            Some((parsed, GuestFile { guest: p.to_path_buf(), host: p.to_path_buf(), mode, bytes }))
        });
        Loader { cache, default_dirs }
    }
}

/// Open once, check on the descriptor that it is a regular file of a bounded size, read it.
fn read_checked(path: &Path) -> std::io::Result<(Vec<u8>, u32)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_SIZE {
        return Err(std::io::Error::other(format!("larger than {} MiB", MAX_SIZE >> 20)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(std::io::Error::other("grew while it was read"));
    }
    Ok((bytes, meta.mode() & 0o777))
}

/// What kind of object `bytes` is, or why it is of no use.
struct Parsed {
    interpreter: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

fn parse(bytes: &[u8], want_executable: bool) -> Result<Parsed, String> {
    if !bytes.starts_with(b"\x7fELF") {
        let start = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
        return Err(format!("not an ELF file (it starts with {start:?})"));
    }
    let elf = Elf::parse(bytes).map_err(|e| format!("not a readable ELF file ({e})"))?;
    if !elf.is_64 || elf.header.e_machine != EM_X86_64 {
        let machine = goblin::elf::header::machine_to_str(elf.header.e_machine);
        let bits = if elf.is_64 { 64 } else { 32 };
        return Err(format!("a {bits}-bit {machine} ELF; the guest runs x86-64 programs"));
    }
    let ok_type = if want_executable { [ET_EXEC, ET_DYN].contains(&elf.header.e_type) } else { elf.header.e_type == ET_DYN };
    if !ok_type {
        let expected = if want_executable { "an executable" } else { "a shared library" };
        return Err(format!("an ELF of type {}, not {expected}", goblin::elf::header::et_to_str(elf.header.e_type)));
    }
    let split = |v: &[&str]| v.iter().flat_map(|s| s.split(':')).filter(|s| !s.is_empty()).map(String::from).collect();
    Ok(Parsed {
        interpreter: elf.interpreter.map(String::from),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
    })
}

/// `..` and `.` resolved by name (the guest's tree mirrors the node's names, not its links).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn expand_origin(dir: &str, origin: &Path) -> PathBuf {
    let o = origin.to_string_lossy();
    let d = dir.replace("${ORIGIN}", &o).replace("$ORIGIN", &o);
    lexical(&Path::new("/").join(d))
}

/// The program at `program` and everything the loader will open for it.
pub fn collect(program: &Path, loader: &Loader) -> Result<Closure, ElfError> {
    let (bytes, mode) = read_checked(program).map_err(|source| ElfError::Read { what: "program", path: program.into(), source })?;
    let parsed = parse(&bytes, true).map_err(|why| ElfError::Unusable { what: "program", path: program.into(), why })?;
    let guest = lexical(program);
    let mut closure = Closure {
        program: GuestFile { guest: guest.clone(), host: program.into(), mode, bytes },
        interpreter: None,
        libraries: Vec::new(),
        ld_cache: None,
    };
    let Some(interp) = parsed.interpreter.clone() else {
        // Static: nothing else to load.
        return Ok(closure);
    };
    let interp_path = PathBuf::from(&interp);
    let (ibytes, imode) =
        read_checked(&interp_path).map_err(|source| ElfError::Read { what: "interpreter", path: interp_path.clone(), source })?;
    parse(&ibytes, false).map_err(|why| ElfError::Unusable { what: "interpreter", path: interp_path.clone(), why })?;
    closure.interpreter = Some(GuestFile { guest: lexical(&interp_path), host: interp_path.clone(), mode: imode, bytes: ibytes });
    closure.ld_cache = loader.cache.as_ref().map(|(_, f)| f.clone());

    // Breadth first, as the loader does; a name already loaded is not looked up again.
    let exe_rpath = if parsed.runpath.is_empty() { parsed.rpath.clone() } else { Vec::new() };
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    let interp_name = interp_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    loaded.insert(interp_name);
    let mut queue: std::collections::VecDeque<(PathBuf, Parsed)> = [(guest, parsed)].into();
    while let Some((from, obj)) = queue.pop_front() {
        let origin = from.parent().unwrap_or(Path::new("/")).to_path_buf();
        for name in &obj.needed {
            if !loaded.insert(name.clone()) {
                continue;
            }
            if closure.libraries.len() >= 256 {
                return Err(ElfError::TooMany { path: program.into() });
            }
            let (file, lib) = find(name, &from, &origin, &obj, &exe_rpath, loader)?;
            if closure.interpreter.as_ref().is_some_and(|i| i.guest == file.guest) {
                continue;
            }
            queue.push_back((file.guest.clone(), lib));
            closure.libraries.push(file);
        }
    }
    Ok(closure)
}

/// Look `name` up for the object at `from` (with its own search paths).
fn find(name: &str, from: &Path, origin: &Path, obj: &Parsed, exe_rpath: &[String], loader: &Loader) -> Result<(GuestFile, Parsed), ElfError> {
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    if name.contains('/') {
        candidates.push((expand_origin(name, origin), "its own path".into()));
    } else {
        if obj.runpath.is_empty() {
            for d in obj.rpath.iter().chain(exe_rpath) {
                candidates.push((expand_origin(d, origin).join(name), format!("DT_RPATH {d}")));
            }
        }
        for d in &obj.runpath {
            candidates.push((expand_origin(d, origin).join(name), format!("DT_RUNPATH {d}")));
        }
        if let Some((cache, _)) = &loader.cache {
            if let Some(p) = cache.lookup(name.as_bytes()) {
                candidates.push((PathBuf::from(std::ffi::OsStr::from_bytes(p)), LD_CACHE.into()));
            }
        }
        for d in &loader.default_dirs {
            candidates.push((d.join(name), d.display().to_string()));
        }
    }
    for (path, _) in &candidates {
        let Ok((bytes, mode)) = read_checked(path) else { continue };
        // Wrong class or machine: the loader passes it over and keeps looking.
        let Ok(parsed) = parse(&bytes, false) else { continue };
        return Ok((GuestFile { guest: lexical(path), host: path.clone(), mode, bytes }, parsed));
    }
    let mut searched: Vec<String> = candidates.into_iter().map(|(_, how)| how).collect();
    searched.dedup();
    Err(ElfError::LibraryMissing { name: name.to_string(), needed_by: from.to_path_buf(), searched: searched.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_and_origin() {
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(lexical(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(expand_origin("$ORIGIN/../lib", Path::new("/srv/bin")), PathBuf::from("/srv/lib"));
        assert_eq!(expand_origin("${ORIGIN}", Path::new("/opt/app")), PathBuf::from("/opt/app"));
    }

    #[test]
    fn refuses_what_is_not_an_x86_64_executable() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let e = collect(&script, &Loader::default()).unwrap_err().to_string();
        assert!(e.contains("not an ELF file") && e.contains("#!/bin/sh"), "{e}");
        let e = collect(&dir.path().join("missing"), &Loader::default()).unwrap_err().to_string();
        assert!(e.starts_with("cannot read program") && e.contains("No such file"), "{e}");
        let e = collect(dir.path(), &Loader::default()).unwrap_err().to_string();
        assert!(e.contains("not a regular file") || e.contains("Is a directory"), "{e}");
        // An ELF for another machine: the header's e_machine says aarch64.
        let mut arm = std::fs::read("/proc/self/exe").unwrap();
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        let p = dir.path().join("arm");
        std::fs::write(&p, &arm).unwrap();
        let e = collect(&p, &Loader::default()).unwrap_err().to_string();
        assert!(e.contains("ARM_AARCH64") || e.contains("AARCH64"), "{e}");
        assert!(e.contains("x86-64"), "{e}");
    }

    #[test]
    fn a_dynamic_program_brings_its_interpreter_libraries_and_cache() {
        // This test binary is itself dynamically linked against the node's glibc.
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let c = collect(&me, &Loader::system()).unwrap();
        assert!(c.is_dynamic());
        let interp = c.interpreter.as_ref().unwrap();
        assert!(interp.guest.to_string_lossy().contains("ld-linux-x86-64.so.2"), "{interp:?}");
        assert!(c.libraries.iter().any(|l| l.guest.ends_with("libc.so.6")), "{:?}", c.libraries.iter().map(|l| &l.guest).collect::<Vec<_>>());
        assert!(c.libraries.iter().all(|l| l.bytes.starts_with(b"\x7fELF")));
        if Path::new(LD_CACHE).exists() {
            assert_eq!(c.ld_cache.as_ref().unwrap().guest, PathBuf::from(LD_CACHE));
        }
        // The same program with nowhere to look: the first library is named as missing.
        let e = collect(&me, &Loader::default()).unwrap_err().to_string();
        assert!(e.starts_with("library ") && e.contains("was not found"), "{e}");
    }

    #[test]
    fn a_static_program_needs_nothing_else() {
        let Ok(bb) = which::which("busybox") else { return };
        let bytes = std::fs::read(&bb).unwrap();
        if Elf::parse(&bytes).unwrap().interpreter.is_some() {
            return; // not busybox-static
        }
        let c = collect(&bb, &Loader::system()).unwrap();
        assert!(!c.is_dynamic() && c.libraries.is_empty() && c.ld_cache.is_none());
        assert_eq!(c.files().count(), 1);
    }

    #[test]
    fn runpath_origin_and_a_non_elf_candidate_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let libc = Loader::system().cache.as_ref().and_then(|(c, _)| c.lookup(b"libc.so.6").map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p))));
        let Some(libc) = libc else { return };
        // $ORIGIN/lib holds a "libc.so.6" that is a text file (passed over), then a dir with
        // the real one.
        let parsed = Parsed { interpreter: None, needed: vec!["libc.so.6".into()], rpath: vec![], runpath: vec!["$ORIGIN/lib".into(), "$ORIGIN/real".into()] };
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("lib/libc.so.6"), "GROUP ( /lib/libc.so.6 )\n").unwrap();
        std::fs::copy(&libc, dir.path().join("real/libc.so.6")).unwrap();
        let from = dir.path().join("prog");
        let (file, _) = find("libc.so.6", &from, dir.path(), &parsed, &[], &Loader::default()).unwrap();
        assert_eq!(file.guest, dir.path().join("real/libc.so.6"));
    }
}
