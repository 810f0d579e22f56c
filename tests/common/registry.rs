//! A real private registry for the pull tests: Debian's docker-registry (the CNCF distribution
//! registry) on 127.0.0.1 with TLS from a CA the test makes and htpasswd auth. Stopped (by pid)
//! when dropped; its data lives in the test's temp dir.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, podman};

pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
    child: Option<Child>,
}

/// Run `cmd` with `input` on stdin; panics with its stderr when it fails.
pub fn with_stdin(mut cmd: Command, input: &str) -> String {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawns");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes
}

/// The test image with `bytes` at `path` in it, as a new local image `name`.
pub fn derived_image(name: &str, path: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, bytes).unwrap();
    let build = format!("{}-build", name.replace(['/', ':', '.'], "-"));
    let _ = podman(&["rm", "-f", &build]);
    super::podman_ok(&["create", "--name", &build, super::IMAGE, "true"]);
    super::podman_ok(&["cp", file.to_str().unwrap(), &format!("{build}:{path}")]);
    super::podman_ok(&["commit", "-q", &build, name]);
    super::podman_ok(&["rm", &build]);
}

impl Registry {
    /// Start one in `dir` with a fresh CA and one user (a random password, never in argv).
    pub fn start(dir: &Path) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let (ca, cert, key) = super::nanos::test_ca(&dir.join("tls"));
        let password: String = random_bytes(12).iter().map(|b| format!("{b:02x}")).collect();
        let mut htpasswd = Command::new("htpasswd");
        htpasswd.args(["-B", "-i", "-c"]).arg(dir.join("htpasswd")).arg("deployer");
        with_stdin(htpasswd, &format!("{password}\n"));
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n\
                     auth:\n  htpasswd:\n    realm: mcp-test\n    path: {htpasswd}\n",
                    data = dir.join("data").display(),
                    cert = cert.display(),
                    key = key.display(),
                    htpasswd = dir.join("htpasswd").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry runs (apt-get install docker-registry)");
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    last = format!("exited ({st}): {}", std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default());
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Registry { port, dir: dir.to_path_buf(), ca, user: "deployer".into(), password, child: Some(child) };
                }
                if Instant::now() >= end {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = "did not listen within 20 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("the registry did not start: {last}")
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The test's own podman credentials and CA (not the agent's): an auth file and a cert dir.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        let (auth, certs) = (self.dir.join("client-auth.json"), self.dir.join("client-certs"));
        if !auth.exists() {
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(&self.ca, certs.join("ca.crt")).unwrap();
            let mut login = Command::new("podman");
            login.arg("login").arg("--authfile").arg(&auth).arg("--cert-dir").arg(&certs).args(["--username", &self.user, "--password-stdin", &self.address()]);
            with_stdin(login, &self.password);
        }
        (auth, certs)
    }

    /// Push the local image `local` as `<registry>/<repo>` and drop the local copy of that
    /// name (so a deploy has to pull it). Returns the full reference.
    pub fn push(&self, local: &str, repo: &str) -> String {
        let (auth, certs) = self.client();
        let reference = format!("{}/{repo}", self.address());
        // Tests share the test image and tag and untag it at once; podman 4.3 can lose a name
        // another process added meanwhile ("image not known" at push): tag again and retry.
        let mut last = String::new();
        for _ in 0..5 {
            let out = podman(&["tag", local, &reference]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let out = Command::new("podman").arg("push").arg("--authfile").arg(&auth).arg("--cert-dir").arg(&certs).arg(&reference).output().unwrap();
            if out.status.success() {
                let _ = podman(&["rmi", &reference]);
                return reference;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(last.contains("image not known"), "push: {last}");
        }
        panic!("push: {last}")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // A CA an agent installed for this registry (root's podman certs dir).
        let _ = std::fs::remove_dir_all(format!("/etc/containers/certs.d/{}", self.address()));
    }
}

/// A TCP proxy in front of the registry that misbehaves once a connection has carried
/// `after` bytes from the registry: it cuts the connection (`stall` None: the registry gone
/// mid-pull) or goes silent for `stall` and then carries on (a slow pull). Small exchanges
/// (login, manifests) pass untouched. Stopped when dropped.
pub struct Proxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16, after: usize, stall: Option<Duration>) -> Proxy {
        use std::io::{Read, Write as _};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut carried = 0usize;
                    let mut buf = [0u8; 16 * 1024];
                    let mut stalled = false;
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        carried += n;
                        if carried > after && !stalled {
                            match stall {
                                None => {
                                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                                    let _ = s_read.shutdown(std::net::Shutdown::Both);
                                    break;
                                }
                                Some(d) => {
                                    stalled = true;
                                    std::thread::sleep(d);
                                }
                            }
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { port, stop }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::fs::remove_dir_all(format!("/etc/containers/certs.d/{}", self.address()));
    }
}
