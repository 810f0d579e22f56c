//! podman's side of registries: pulls (with progress, a heartbeat and a deadline), login,
//! logout and the list of registries with credentials. Decisions live in [`super::registries`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::podman::Podman;
use super::registries::{self, certs_dir, certs_root, RegistryEntry, MANAGED_MARKER};
use super::{Registries, RuntimeError};

const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(1800);
/// A line of progress at least this often, so that a client's idle timeout never fires
/// during a long silent download.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Longest progress line kept (podman's are short; a hostile registry's need not be).
const MAX_LINE: u64 = 4096;
const MAX_FILE: u64 = 1 << 20;

fn registry_name(image: &str) -> String {
    registries::registry_of(image).unwrap_or("the default registry").to_string()
}

/// Read a small file without following a symlink; None when absent.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, std::io::Error> {
    let f = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{} is not a regular file", path.display())));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Write `bytes` to `dir/name` through a temp file and a rename (a link at the name is
/// replaced, never followed).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), std::io::Error> {
    let mut tmp = tempfile::Builder::new().prefix(".mcp-").suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

impl Podman {
    /// Pull `image` unless it is here already (one podman call when it is, which also
    /// tells its digest).
    pub(super) fn ensure_image(&self, image: &str, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        if self.learn_digest(image)? {
            return Ok(());
        }
        self.pull(image, progress)
    }

    /// Ask podman for the local image's registry digest and remember it; false when the
    /// image is not here.
    fn learn_digest(&self, image: &str) -> Result<bool, RuntimeError> {
        let out = self.command(&registries::digest_argv(image))?.output().map_err(|e| self.spawn_error("image inspect", e))?;
        if !out.status.success() {
            return Ok(false);
        }
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if registries::is_digest(&digest) {
            self.digests.lock().unwrap_or_else(|p| p.into_inner()).insert(image.to_string(), digest);
        }
        Ok(true)
    }

    /// The digest learned for `image` in this process, if any.
    pub(super) fn known_digest(&self, image: &str) -> Option<String> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner()).get(image).cloned()
    }

    /// `podman pull`, its stderr lines as progress (plus a heartbeat while it is silent),
    /// stopped at the deadline; a failure names the registry and the cause.
    pub(super) fn pull(&self, image: &str, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        let fail = |cause: String| RuntimeError::Pull { image: image.to_string(), registry: registry_name(image), cause };
        self.ensure_auth_file()?;
        progress(format!("pulling {image}"));
        let mut child = self
            .command(&registries::pull_argv(image))?
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error("pull", e))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut all = Vec::new();
            loop {
                let mut line = Vec::new();
                match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if !line.ends_with(b"\n") {
                            // Cut: drop the rest of the line.
                            let mut rest = Vec::new();
                            let _ = r.read_until(b'\n', &mut rest);
                        }
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        all.push(text.clone());
                        if all.len() > 50 {
                            all.remove(0);
                        }
                        let _ = tx.send(text);
                    }
                }
            }
            all.join("\n")
        });
        let timeout = self.config.pull_timeout_secs.map(Duration::from_secs).unwrap_or(DEFAULT_PULL_TIMEOUT);
        let (start, end) = (Instant::now(), Instant::now() + timeout);
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(HEARTBEAT.min(end.saturating_duration_since(Instant::now()))) {
                Ok(line) if !line.is_empty() => progress(format!("{image}: {line}")),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= end {
                        let _ = child.kill();
                        timed_out = true;
                        break;
                    }
                    progress(format!("still pulling {image} ({}s)", start.elapsed().as_secs()));
                }
            }
        }
        let status = child.wait().map_err(|e| self.spawn_error("pull", e))?;
        let text = reader.join().unwrap_or_default();
        if timed_out {
            return Err(fail(format!("it took longer than {}s ([podman] pull_timeout_secs)", timeout.as_secs())));
        }
        if !status.success() {
            return Err(fail(registries::classify(&text).describe(&registry_name(image))));
        }
        self.learn_digest(image)?;
        Ok(())
    }

    fn auth_file(&self) -> Result<&Path, RuntimeError> {
        self.config
            .auth_file
            .as_deref()
            .ok_or_else(|| RuntimeError::Unsupported("no registry auth file is configured ([podman] auth_file)".into()))
    }

    /// The auth file, made empty (0600, in a 0700 dir) when there is none yet, so that every
    /// pull reads it and never podman's default one.
    fn ensure_auth_file(&self) -> Result<(), RuntimeError> {
        let Some(auth) = self.config.auth_file.as_deref() else { return Ok(()) };
        if std::fs::symlink_metadata(auth).is_ok() {
            return Ok(());
        }
        let dir = auth.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(Self::io(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Self::io(format!("securing {}", dir.display())))?;
        let name = auth.file_name().and_then(|n| n.to_str()).unwrap_or("auth.json");
        write_atomic(dir, name, b"{\"auths\":{}}\n", 0o600).map_err(Self::io(format!("writing {}", auth.display())))
    }

    fn io(what: String) -> impl FnOnce(std::io::Error) -> RuntimeError {
        move |source| RuntimeError::Io { what, source }
    }
}

impl Registries for Podman {
    fn login(&self, registry: &str, username: &str, password: &str, ca_pem: Option<&str>) -> Result<(), RuntimeError> {
        let auth = self.auth_file()?;
        self.ensure_auth_file()?;
        // The CA goes in first (podman login must trust it), and goes back to what was there
        // when the login fails.
        let certs = certs_dir(&certs_root(), registry);
        let ca_file = certs.join("ca.crt");
        let previous = match ca_pem {
            Some(pem) => {
                std::fs::create_dir_all(&certs).map_err(Self::io(format!("creating {}", certs.display())))?;
                let old = read_small(&ca_file).map_err(Self::io(format!("reading {}", ca_file.display())))?;
                write_atomic(&certs, "ca.crt", pem.as_bytes(), 0o644).map_err(Self::io(format!("writing {}", ca_file.display())))?;
                Some(old)
            }
            None => None,
        };
        let outcome = (|| {
            let mut child = self
                .command(&registries::login_argv(registry, username))?
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| self.spawn_error("login", e))?;
            let mut stdin = child.stdin.take().expect("piped");
            // A write error means podman already stopped reading: its exit says why.
            let _ = stdin.write_all(password.as_bytes()).and_then(|_| stdin.write_all(b"\n"));
            drop(stdin);
            let out = child.wait_with_output().map_err(|e| self.spawn_error("login", e))?;
            if out.status.success() {
                return Ok(());
            }
            // podman does not print the password; scrub it anyway before it reaches a message.
            let stderr = String::from_utf8_lossy(&out.stderr).replace(password, "***");
            Err(RuntimeError::Login { registry: registry.to_string(), cause: registries::classify(&stderr).describe(registry) })
        })();
        match (&outcome, previous) {
            (Ok(()), Some(_)) => {
                std::fs::write(certs.join(MANAGED_MARKER), b"installed by mcp registry login\n").map_err(Self::io(format!("writing in {}", certs.display())))?
            }
            (Err(_), Some(Some(old))) => {
                let _ = write_atomic(&certs, "ca.crt", &old, 0o644);
            }
            (Err(_), Some(None)) => {
                let _ = std::fs::remove_file(&ca_file);
                let _ = std::fs::remove_dir(&certs);
            }
            _ => {}
        }
        outcome?;
        if auth.exists() {
            std::fs::set_permissions(auth, std::fs::Permissions::from_mode(0o600)).map_err(Self::io(format!("securing {}", auth.display())))?;
        }
        Ok(())
    }

    fn logout(&self, registry: &str) -> Result<bool, RuntimeError> {
        self.auth_file()?;
        let out = self.command(&registries::logout_argv(registry))?.output().map_err(|e| self.spawn_error("logout", e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let was_in = out.status.success();
        if !was_in && !stderr.contains("not logged into") {
            return Err(RuntimeError::Exit { program: "podman", step: "logout".into(), code: out.status.code().unwrap_or(-1), stderr: stderr.trim().to_string() });
        }
        let certs = certs_dir(&certs_root(), registry);
        if certs.join(MANAGED_MARKER).exists() {
            let _ = std::fs::remove_file(certs.join("ca.crt"));
            let _ = std::fs::remove_file(certs.join(MANAGED_MARKER));
            let _ = std::fs::remove_dir(&certs);
        }
        Ok(was_in)
    }

    fn list(&self) -> Result<Vec<RegistryEntry>, RuntimeError> {
        let auth = self.auth_file()?;
        let Some(bytes) = read_small(auth).map_err(Self::io(format!("reading {}", auth.display())))? else { return Ok(Vec::new()) };
        let names = registries::logged_in(&String::from_utf8_lossy(&bytes))
            .map_err(|message| RuntimeError::Output { program: "podman", step: format!("auth file {}", auth.display()), message })?;
        let root = certs_root();
        Ok(names.into_iter().map(|registry| RegistryEntry { ca: certs_dir(&root, &registry).join("ca.crt").exists(), registry }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_reads_refuse_links_and_write_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_small(&dir.path().join("none")).unwrap(), None);
        write_atomic(dir.path(), "ca.crt", b"one", 0o644).unwrap();
        assert_eq!(read_small(&dir.path().join("ca.crt")).unwrap().as_deref(), Some(&b"one"[..]));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        assert!(read_small(&dir.path().join("link")).is_err(), "a symlink is not followed");
        // Writing over a link replaces the link, not its target.
        write_atomic(dir.path(), "link", b"two", 0o644).unwrap();
        assert!(!std::fs::symlink_metadata(dir.path().join("link")).unwrap().file_type().is_symlink());
    }
}
