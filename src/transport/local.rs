//! The embedded local node: `mcp-agent rpc` as a child process, protocol over its stdio.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::{CallError, Link, Session, Transport, TransportError};

pub struct LocalTransport {
    node: String,
    /// Program and arguments, e.g. `["/usr/bin/mcp-agent", "rpc"]`.
    argv: Vec<String>,
    /// Longest wait for the agent's hello (a daemon that is stopped or stuck never answers).
    connect_timeout: Duration,
    /// Longest silence accepted within one request (as over SSH).
    request_timeout: Duration,
}

impl LocalTransport {
    /// `agent` is the node's configured command line (split on whitespace); by default the
    /// `mcp-agent` installed beside this `mcp`, else the one on PATH.
    pub fn new(node: &str, agent: Option<&str>) -> Result<LocalTransport, TransportError> {
        let argv: Vec<String> = match agent {
            Some(cmd) => cmd.split_whitespace().map(str::to_string).collect(),
            None => vec![default_agent(node)?.to_string_lossy().into_owned(), "rpc".into()],
        };
        if argv.is_empty() {
            return Err(TransportError::AgentMissing { node: node.into(), program: String::new(), why: "empty `agent` command".into() });
        }
        let program = which::which(&argv[0]).map_err(|e| TransportError::AgentMissing {
            node: node.into(),
            program: argv[0].clone(),
            why: e.to_string(),
        })?;
        let mut argv = argv;
        argv[0] = program.to_string_lossy().into_owned();
        Ok(LocalTransport { node: node.to_string(), argv, connect_timeout: Duration::from_secs(10), request_timeout: Duration::from_secs(300) })
    }

    /// The same limits `--connect-timeout` and `--timeout` set for SSH nodes.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }
}

fn default_agent(node: &str) -> Result<PathBuf, TransportError> {
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf())) {
        let beside = dir.join("mcp-agent");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    which::which("mcp-agent").map_err(|e| TransportError::AgentMissing {
        node: node.into(),
        program: "mcp-agent".into(),
        why: e.to_string(),
    })
}

struct ChildLink(Child);

impl Link for ChildLink {
    fn diagnostics(&mut self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move {
            let mut text = String::new();
            if let Some(mut err) = self.0.stderr.take() {
                let _ = err.read_to_string(&mut text).await;
            }
            if let Ok(Some(status)) = self.0.try_wait() {
                if !status.success() {
                    text.push_str(&format!(" ({status})"));
                }
            }
            text
        })
    }
}

impl Transport for LocalTransport {
    fn open(&self) -> Pin<Box<dyn Future<Output = Result<Session, TransportError>> + Send + '_>> {
        Box::pin(async move {
            // Its own process group: a Ctrl-C at the terminal stops mcp, not the agent in the
            // middle of a replace; the agent sees its input close and finishes the request.
            let mut child = Command::new(&self.argv[0])
                .args(&self.argv[1..])
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Not killed when the session ends: an agent that took a request finishes it
                // (a deploy must not stop half-way), whether mcp was interrupted or gave up
                // waiting; it sees its input close and exits.
                .kill_on_drop(false)
                .spawn()
                .map_err(|source| TransportError::Spawn { node: self.node.clone(), command: self.argv.join(" "), source })?;
            let pid = child.id();
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let start = Session::start(&self.node, Box::new(stdout), Box::new(stdin), Box::new(ChildLink(child)));
            match tokio::time::timeout(self.connect_timeout, start).await {
                Err(_) => {
                    // No request was given yet: nothing can be cut half-way. Its process group
                    // (the agent, or the forwarder waiting on a stopped daemon) goes.
                    if let Some(pid) = pid {
                        // SAFETY: killpg has no memory-safety preconditions; the group is the
                        // child's own (process_group(0)).
                        unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
                    }
                    Err(TransportError::Timeout {
                        node: self.node.clone(),
                        what: "waiting for the local agent's hello (is its daemon stopped, or podman hung?)".into(),
                        secs: self.connect_timeout.as_secs(),
                    })
                }
                Ok(Ok(s)) => Ok(s.with_idle_timeout(self.request_timeout)),
                Ok(Err(CallError::Transport(t))) => Err(t),
                Ok(Err(CallError::Agent(e))) => Err(TransportError::Handshake { node: self.node.clone(), error: e }),
            }
        })
    }
}
