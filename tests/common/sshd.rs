//! Real OpenSSH servers on 127.0.0.1 for the SSH tests: one per node, each with its own host
//! key, authorized_keys and agent state dir. Stopped (by pid) when dropped.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, AGENT};

pub fn keygen(path: &Path) {
    keygen_type(path, "ed25519");
}

/// A key of type `kind` (ed25519, ecdsa, rsa) at `path`.
pub fn keygen_type(path: &Path, kind: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "mcp-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success());
}

pub fn public_key(path: &Path) -> String {
    std::fs::read_to_string(format!("{}.pub", path.display())).unwrap().trim().to_string()
}

/// The agent command a test node runs: its own state dir, and the podman settings of this
/// host passed explicitly (sshd does not pass our environment on).
pub fn agent_command(state: &Path) -> String {
    let mut cmd = format!("{AGENT} rpc --state-dir {}", state.display());
    if let Ok(conf) = std::env::var("CONTAINERS_CONF") {
        cmd.push_str(&format!(" --containers-conf {conf}"));
    }
    cmd
}

pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    pub state: PathBuf,
    child: Child,
}

impl Sshd {
    /// Start sshd in `dir` (created), letting in `authorized` (whole authorized_keys lines).
    pub fn start(dir: &Path, authorized: &[String]) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_ed25519");
        if !host_key.exists() {
            keygen(&host_key);
        }
        std::fs::write(dir.join("authorized_keys"), authorized.join("\n") + "\n").unwrap();
        // A free port may be taken by someone else before sshd binds it: then it exits, and
        // another port is tried.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::spawn(dir, free_port(), std::slice::from_ref(&host_key)) {
                Ok(sshd) => return sshd,
                Err(why) => last = why,
            }
        }
        panic!("sshd did not start: {last}")
    }

    /// The nodes log in as root on this machine, whose ~/.bashrc runs `pyenv init` (about a
    /// hundred processes per SSH session: 100 ms of the 200 ms a session took, and most of the
    /// CPU when ten sessions share two cores). A node's agent account has no such rc file:
    /// `SetEnv SHLVL=1` makes bash skip ~/.bashrc (it reads it under sshd only at level 1).
    fn spawn(dir: &Path, port: u16, host_keys: &[PathBuf]) -> Result<Sshd, String> {
        let config = dir.join("sshd_config");
        let host_keys: String = host_keys.iter().map(|k| format!("HostKey {}\n", k.display())).collect();
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\n{host_keys}PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\nSetEnv SHLVL=1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let pid_file = dir.join("sshd.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts (apt-get install openssh-server)");
        // sshd writes its pid file once it listens: then the port is this sshd's (a connect
        // alone could reach whoever else holds the port).
        let end = Instant::now() + Duration::from_secs(10);
        let log = || std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("sshd on port {port} exited ({status}): {}", log()));
            }
            let ours = std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == child.id().to_string());
            if ours && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Sshd { port, dir: dir.to_path_buf(), state: dir.join("agent-state"), child });
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("sshd did not listen on {port} within 10 s: {}", log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A new host key on the same port (what a reinstalled or impersonated node looks like).
    pub fn change_host_key(self) -> Sshd {
        let (dir, port) = (self.dir.clone(), self.port);
        drop(self);
        keygen(&dir.join("host_ed25519"));
        Self::spawn(&dir, port, &[dir.join("host_ed25519")]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same port, now with host keys of these types (made fresh, in this order).
    pub fn with_host_key_types(self, kinds: &[&str]) -> Sshd {
        let (dir, port) = (self.dir.clone(), self.port);
        drop(self);
        let keys: Vec<PathBuf> = kinds.iter().map(|k| dir.join(format!("host_{k}"))).collect();
        for (k, path) in kinds.iter().zip(&keys) {
            if !path.exists() {
                keygen_type(path, k);
            }
        }
        Self::spawn(&dir, port, &keys).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn host_key_line(&self) -> String {
        public_key(&self.dir.join("host_ed25519"))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real ssh-agent on a private socket holding `key`; killed when dropped.
pub struct SshAgent {
    pub socket: PathBuf,
    pid: u32,
}

impl SshAgent {
    pub fn start(dir: &Path, key: &Path) -> SshAgent {
        let socket = dir.join("agent.sock");
        let out = Command::new("ssh-agent").arg("-a").arg(&socket).arg("-s").output().expect("ssh-agent runs");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let pid: u32 = text
            .split("SSH_AGENT_PID=")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.parse().ok())
            .expect("ssh-agent prints its pid");
        let st = Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &socket).stderr(Stdio::null()).status().unwrap();
        assert!(st.success());
        SshAgent { socket, pid }
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the agent this test started.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
    }
}
