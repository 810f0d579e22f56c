//! podman's side of registries: pulls (with progress, a heartbeat and a deadline), login,
//! logout and the list of registries with credentials. Decisions live in [`super::registries`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::podman::Podman;
use super::registries::{self, certs_dir, certs_root, RegistryEntry, MCP_CA};
use super::{child, io_err, Registries, RuntimeError};

const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long what podman said of an image is taken as still true (one deploy's span: its pull,
/// its hash, its create), so that a deploy asks once, not three times.
const FRESH: Duration = Duration::from_secs(10);

/// What podman said of an image, and when.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The image id (its config digest, hex), what `podman pull` prints.
    pub id: Option<String>,
    /// The registry (manifest) digest, `sha256:...`.
    pub digest: Option<String>,
    pub at: Instant,
}
/// A line of progress at least this often, so that a client's idle timeout never fires
/// during a long silent download.
const HEARTBEAT: Duration = Duration::from_secs(5);
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
    /// Pull `image` unless it is here: one podman call (which also tells its id and digest),
    /// none when podman said so moments ago (a deploy's pull, or its check of the same image).
    /// Images named `localhost/...` come from no registry (`podman import`, builds): nothing
    /// to pull or label, and no call for them.
    pub(super) fn ensure_image(&self, image: &str, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        if registries::is_local(image) || self.seen_lately(image).is_some() || self.inspect_image(image)? {
            return Ok(());
        }
        self.pull(image, progress)
    }

    /// What podman said of `image` less than [`FRESH`] ago.
    fn seen_lately(&self, image: &str) -> Option<Seen> {
        self.images.lock().unwrap_or_else(|p| p.into_inner()).get(image).filter(|s| s.at.elapsed() < FRESH).cloned()
    }

    fn remember(&self, image: &str, id: Option<String>, digest: Option<String>) {
        self.images.lock().unwrap_or_else(|p| p.into_inner()).insert(image.to_string(), Seen { id, digest, at: Instant::now() });
    }

    /// `podman image inspect`: remember the image's id and digest; false when it is not here.
    fn inspect_image(&self, image: &str) -> Result<bool, RuntimeError> {
        let (status, stdout, _) = self.call("image inspect", &registries::inspect_argv(image), self.call_limit(), None)?;
        if !status.success() {
            return Ok(false);
        }
        let seen = registries::parse_inspect(&String::from_utf8_lossy(&stdout), image);
        let digest = registries::choose_digest(&seen, || self.tag_digest(image).ok().flatten());
        self.remember(image, seen.id, digest);
        Ok(true)
    }

    /// The image's registry digest (for the container's label): known, or asked for now.
    pub(super) fn digest_of(&self, image: &str) -> Option<String> {
        if registries::is_local(image) {
            return None;
        }
        if let Some(d) = self.seen_lately(image).and_then(|s| s.digest) {
            return Some(d);
        }
        self.inspect_image(image).ok()?;
        self.seen_lately(image).and_then(|s| s.digest)
    }

    /// The local image's id (what a tag points at here): known, or asked for now.
    pub(super) fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        if let Some(id) = self.seen_lately(image).and_then(|s| s.id) {
            return Ok(Some(id));
        }
        self.inspect_image(image)?;
        Ok(self.seen_lately(image).and_then(|s| s.id))
    }

    /// `podman pull`, its stderr lines as progress (plus a heartbeat while it is silent),
    /// stopped at the deadline; a failure names the registry and the cause.
    pub(super) fn pull(&self, image: &str, progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        let fail = |cause: String| RuntimeError::Pull { image: image.to_string(), registry: registry_name(image), cause };
        self.ensure_auth_file()?;
        progress(format!("pulling {image}"));
        let mut cmd = self.command(&registries::pull_argv(image))?;
        // Its own process group, dying with the agent: a kill at the limit reaches the copy of
        // itself rootless podman re-executes (which holds the pipes).
        child::tie_to_agent(&mut cmd);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| self.spawn_error("pull", e))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        let (tail_tx, tail) = mpsc::channel::<String>();
        std::thread::spawn(move || {
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
            let _ = tail_tx.send(all.join("\n"));
        });
        // podman prints the image id on stdout (a line; more is read and dropped).
        let out = child::read_head(child.stdout.take().expect("piped"), MAX_LINE);
        let timeout = self.config.pull_timeout_secs.map(Duration::from_secs).unwrap_or(DEFAULT_PULL_TIMEOUT);
        let (start, end) = (Instant::now(), Instant::now() + timeout);
        loop {
            match rx.recv_timeout(HEARTBEAT.min(end.saturating_duration_since(Instant::now()))) {
                Ok(line) if !line.is_empty() => progress(format!("{image}: {line}")),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= end => break,
                // Exited, its stderr still held by something it left: done all the same.
                Err(mpsc::RecvTimeoutError::Timeout) if child.try_wait().ok().flatten().is_some() => break,
                Err(mpsc::RecvTimeoutError::Timeout) => progress(format!("still pulling {image} ({}s)", start.elapsed().as_secs())),
            }
        }
        // Past the limit: killed with its process group.
        let status = child::wait_at_most(&mut child, end.saturating_duration_since(Instant::now())).map_err(|e| self.spawn_error("pull", e))?;
        let timed_out = status.is_none();
        // Whatever still holds the pipes (nothing, once the group is gone): what came so far.
        let text = tail.recv_timeout(child::PIPE_GRACE).unwrap_or_default();
        let stdout = String::from_utf8_lossy(&out.recv_timeout(child::PIPE_GRACE).unwrap_or_default()).into_owned();
        if timed_out {
            return Err(fail(format!("it took longer than {}s ([podman] pull_timeout_secs)", timeout.as_secs())));
        }
        if !status.is_some_and(|s| s.success()) {
            return Err(fail(registries::classify(&text).describe(&registry_name(image))));
        }
        let id = stdout.lines().map(str::trim).rfind(|l| registries::is_hex_id(l)).map(str::to_string);
        self.remember(image, id, None);
        Ok(())
    }

    /// What `image`'s tag points at in its registry now (with the node's credentials and CA).
    pub(super) fn tag_digest(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        if registries::is_local(image) {
            return Ok(None);
        }
        let reference = super::registry_client::parse_reference(image);
        let creds = match self.config.auth_file.as_deref() {
            Some(auth) => read_small(auth)
                .map_err(io_err(format!("reading {}", auth.display())))?
                .and_then(|b| super::registry_client::credentials(&String::from_utf8_lossy(&b), &reference.registry)),
            None => None,
        };
        let certs = certs_dir(&certs_root(), &reference.registry);
        super::registry_client::current_digest(image, creds, &certs)
            .map(Some)
            .map_err(|cause| RuntimeError::TagCheck { image: image.to_string(), registry: reference.registry.clone(), cause: cause.describe(&reference.registry) })
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
        // A dir the agent makes is 0700; one that exists (say /etc/containers) is left alone.
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(format!("securing {}", dir.display())))?;
        }
        let name = auth.file_name().and_then(|n| n.to_str()).unwrap_or("auth.json");
        write_atomic(dir, name, b"{\"auths\":{}}\n", 0o600).map_err(io_err(format!("writing {}", auth.display())))
    }

}

impl Registries for Podman {
    fn login(&self, registry: &str, username: &str, password: &str, ca_pem: Option<&str>) -> Result<(), RuntimeError> {
        let auth = self.auth_file()?;
        self.ensure_auth_file()?;
        // The CA goes in first (podman login must trust it), and goes back to what was there
        // when the login fails.
        // Our own file name: podman reads every *.crt there, and an admin's ca.crt stays theirs.
        let certs = certs_dir(&certs_root(), registry);
        let ca_file = certs.join(MCP_CA);
        let previous = match ca_pem {
            Some(pem) => {
                std::fs::create_dir_all(&certs).map_err(io_err(format!("creating {}", certs.display())))?;
                let old = read_small(&ca_file).map_err(io_err(format!("reading {}", ca_file.display())))?;
                write_atomic(&certs, MCP_CA, pem.as_bytes(), 0o644).map_err(io_err(format!("writing {}", ca_file.display())))?;
                Some(old)
            }
            None => None,
        };
        let outcome = (|| {
            let mut input = password.as_bytes().to_vec();
            input.push(b'\n');
            let (status, _, stderr) = self.call("login", &registries::login_argv(registry, username), self.call_limit(), Some(input))?;
            if status.success() {
                return Ok(());
            }
            // podman does not print the password; scrub it anyway before it reaches a message.
            let stderr = String::from_utf8_lossy(&stderr).replace(password, "***");
            Err(RuntimeError::Login { registry: registry.to_string(), cause: registries::classify(&stderr).describe(registry) })
        })();
        match (&outcome, previous) {
            (Err(_), Some(Some(old))) => {
                let _ = write_atomic(&certs, MCP_CA, &old, 0o644);
            }
            (Err(_), Some(None)) => {
                let _ = std::fs::remove_file(&ca_file);
                let _ = std::fs::remove_dir(&certs);
            }
            _ => {}
        }
        outcome?;
        if auth.exists() {
            std::fs::set_permissions(auth, std::fs::Permissions::from_mode(0o600)).map_err(io_err(format!("securing {}", auth.display())))?;
        }
        Ok(())
    }

    fn logout(&self, registry: &str) -> Result<bool, RuntimeError> {
        self.auth_file()?;
        let (status, _, stderr) = self.call("logout", &registries::logout_argv(registry), self.call_limit(), None)?;
        let stderr = String::from_utf8_lossy(&stderr);
        let was_in = status.success();
        if !was_in && !stderr.contains("not logged into") {
            return Err(RuntimeError::Exit { program: "podman", step: "logout".into(), code: status.code().unwrap_or(-1), stderr: stderr.trim().to_string() });
        }
        let certs = certs_dir(&certs_root(), registry);
        let _ = std::fs::remove_file(certs.join(MCP_CA));
        let _ = std::fs::remove_dir(&certs); // only when nothing else is in it
        Ok(was_in)
    }

    fn list(&self) -> Result<Vec<RegistryEntry>, RuntimeError> {
        let auth = self.auth_file()?;
        let Some(bytes) = read_small(auth).map_err(io_err(format!("reading {}", auth.display())))? else { return Ok(Vec::new()) };
        let names = registries::logged_in(&String::from_utf8_lossy(&bytes))
            .map_err(|message| RuntimeError::Output { program: "podman", step: format!("auth file {}", auth.display()), message })?;
        let root = certs_root();
        let has_ca = |r: &str| [MCP_CA, "ca.crt"].iter().any(|f| certs_dir(&root, r).join(f).exists());
        Ok(names.into_iter().map(|registry| RegistryEntry { ca: has_ca(&registry), registry }).collect())
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
