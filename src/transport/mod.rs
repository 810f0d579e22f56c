//! How the CLI reaches a node's agent. Every transport yields the same thing: a byte stream to
//! a running `mcp-agent rpc`, over which [`Session`] speaks the JSON-lines protocol.

pub mod known_hosts;
pub mod local;
pub mod ssh;
pub mod tcp;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::proto::lines::{BoundedLines, Line, MAX_PROTOCOL_LINE};

use crate::proto::{self, HelloParams, HelloResult, LogLine, Progress, Request, Response, RpcError, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot find the agent program {program:?} for node {node}: {why}; install mcp-agent or set `agent` for the node in mcp.toml")]
    AgentMissing { node: String, program: String, why: String },
    #[error("cannot start `{command}` for node {node}: {source}")]
    Spawn { node: String, command: String, source: std::io::Error },
    #[error("node {node}: the agent exited before answering{}", stderr_suffix(.stderr))]
    AgentExited { node: String, stderr: String },
    #[error("node {node}: {error}")]
    Handshake { node: String, error: RpcError },
    #[error("node {node}: {message}")]
    Config { node: String, message: String },
    #[error("cannot reach node {node} at {address}: {source}")]
    Connect { node: String, address: String, source: std::io::Error },
    #[error("cannot reach node {node} at any of its addresses: {}", tried.join("; "))]
    Unreachable { node: String, tried: Vec<String> },
    #[error("node {node}: timed out after {secs}s {what}")]
    Timeout { node: String, what: String, secs: u64 },
    #[error("node {node}: SSH failed: {message}")]
    Ssh { node: String, message: String },
    #[error(
        "node {node} ({address}) is not trusted yet: its host key {algorithm} {fingerprint} is in no known_hosts file.\n\
         If that is the node's key, trust it with `mcp login {node}` (shows the key and records it)."
    )]
    HostKeyUnknown { node: String, address: String, algorithm: String, fingerprint: String },
    #[error(
        "WARNING: the host key of node {node} ({address}) HAS CHANGED: it now shows {algorithm} {fingerprint}, \
         which differs from line {line} of {}. Someone may be intercepting the connection. Refusing to connect. \
         If the change is expected, remove that line and run `mcp login {node}`.", file.display()
    )]
    HostKeyChanged { node: String, address: String, algorithm: String, fingerprint: String, file: PathBuf, line: usize },
    #[error("node {node} ({address}): host key {fingerprint} is revoked (line {line} of {}); refusing to connect", file.display())]
    HostKeyRevoked { node: String, address: String, fingerprint: String, file: PathBuf, line: usize },
    #[error("node {node} ({address}) refused authentication as {user:?}; tried: {}. Add your key to the node's authorized_keys, load it into ssh-agent, or set `identity`/`user` for the node in mcp.toml", if tried.is_empty() { "no key (none in ssh-agent or ~/.ssh)".to_string() } else { tried.join(", ") })]
    AuthRefused { node: String, user: String, address: String, tried: Vec<String> },
    #[error("node {node}: lost the connection to the agent: {source}")]
    Io { node: String, source: std::io::Error },
    #[error("node {node}: the agent sent something that is not a response ({message}): {line:?}")]
    BadResponse { node: String, message: String, line: String },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// Failures of one call: either the way there, or the agent's own answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Agent(RpcError),
}

/// The client's side of the version check: an agent that accepted our hello must also speak
/// our protocol and plan versions.
pub fn check_hello(h: &HelloResult) -> Result<(), RpcError> {
    if h.protocol != PROTOCOL_VERSION || h.plan_version != crate::plan::PLAN_VERSION {
        return Err(RpcError::new(
            crate::proto::ErrorCode::ProtocolMismatch,
            format!(
                "protocol mismatch: mcp-agent {} speaks protocol {} (plan version {}), this mcp {} speaks {PROTOCOL_VERSION} \
                 (plan version {}); install the same mcp release on both ends",
                h.agent,
                h.protocol,
                h.plan_version,
                env!("CARGO_PKG_VERSION"),
                crate::plan::PLAN_VERSION
            ),
        ));
    }
    Ok(())
}


pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// What keeps the far end alive (a child process, an SSH session) and can tell why it died.
pub trait Link: Send {
    /// Whatever the far end said on its error stream, once it is gone.
    fn diagnostics(&mut self) -> Pin<Box<dyn Future<Output = String> + Send + '_>>;
}

/// A way to reach one node's agent; one implementation per file.
pub trait Transport: Send + Sync {
    fn open(&self) -> Pin<Box<dyn Future<Output = Result<Session, TransportError>> + Send + '_>>;
}

/// An open protocol session with one agent, after a successful hello.
pub struct Session {
    node: String,
    reader: BoundedLines<BufReader<BoxRead>>,
    writer: BoxWrite,
    link: Box<dyn Link>,
    next_id: u64,
    hello: Option<HelloResult>,
    /// Longest silence accepted from the agent within one request.
    idle_timeout: Option<Duration>,
    /// The address that answered (SSH nodes).
    address: Option<String>,
}

impl Session {
    /// Wrap a stream and do the protocol handshake.
    pub async fn start(node: &str, reader: BoxRead, writer: BoxWrite, link: Box<dyn Link>) -> Result<Session, CallError> {
        let mut s = Session {
            node: node.to_string(),
            reader: BoundedLines::new(BufReader::new(reader), MAX_PROTOCOL_LINE),
            writer,
            link,
            next_id: 1,
            hello: None,
            idle_timeout: None,
            address: None,
        };
        let params = HelloParams { protocol: PROTOCOL_VERSION, client: format!("mcp {}", env!("CARGO_PKG_VERSION")) };
        let hello: HelloResult = s.call(proto::HELLO, &params, &mut |_| {}).await?;
        check_hello(&hello).map_err(CallError::Agent)?;
        s.hello = Some(hello);
        Ok(s)
    }

    pub fn with_idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = Some(t);
        self
    }

    pub fn with_address(mut self, address: String) -> Self {
        self.address = Some(address);
        self
    }

    /// The address that answered, for nodes reached over the network.
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// Change the longest accepted silence (None: wait forever, e.g. for a followed log).
    pub fn set_idle_timeout(&mut self, t: Option<Duration>) {
        self.idle_timeout = t;
    }

    /// Whether the node's `mcp-agent serve` daemon answers (rather than a standalone agent).
    pub fn daemon(&self) -> bool {
        self.hello.as_ref().is_some_and(|h| h.daemon)
    }

    pub fn agent_version(&self) -> &str {
        self.hello.as_ref().map(|h| h.agent.as_str()).unwrap_or("?")
    }

    /// One request; progress messages go to `progress` until the result arrives.
    pub async fn call<P: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<T, CallError> {
        self.call_streaming(method, params, progress, &mut |_| {}).await
    }

    /// One request whose log lines (from `logs`) go to `log` as they arrive.
    pub async fn call_streaming<P: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
        progress: &mut (dyn FnMut(Progress) + Send),
        log: &mut (dyn FnMut(LogLine) + Send),
    ) -> Result<T, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request { id, method: method.to_string(), params: serde_json::to_value(params).expect("params serialize") };
        let mut line = serde_json::to_vec(&req).expect("requests serialize");
        line.push(b'\n');
        let io = |source| TransportError::Io { node: self.node.clone(), source };
        if let Err(e) = self.writer.write_all(&line).await {
            return Err(self.died(e).await);
        }
        self.writer.flush().await.map_err(io)?;
        loop {
            let next = match self.idle_timeout {
                Some(t) => match tokio::time::timeout(t, self.reader.next_line()).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(TransportError::Timeout {
                            node: self.node.clone(),
                            what: format!("waiting for the agent to answer {method}"),
                            secs: t.as_secs(),
                        }
                        .into())
                    }
                },
                None => self.reader.next_line().await,
            };
            let line = match next {
                Ok(Some(Line::Text(line))) => line,
                // Kept nothing of it: a node cannot make the client grow without bound.
                Ok(Some(Line::TooLong(n))) => {
                    return Err(TransportError::BadResponse {
                        node: self.node.clone(),
                        message: format!("the agent sent a line of {n} bytes, more than the {MAX_PROTOCOL_LINE} a line may have"),
                        line: String::new(),
                    }
                    .into())
                }
                Ok(None) => {
                    let stderr = self.link.diagnostics().await;
                    return Err(TransportError::AgentExited { node: self.node.clone(), stderr }.into());
                }
                Err(e) => return Err(self.died(e).await),
            };
            let resp: Response = serde_json::from_str(&line).map_err(|e| TransportError::BadResponse {
                node: self.node.clone(),
                message: e.to_string(),
                line: line.chars().take(200).collect(),
            })?;
            if resp.id != id && resp.id != 0 {
                continue;
            }
            if let Some(p) = resp.progress {
                progress(p);
                continue;
            }
            if let Some(l) = resp.log {
                log(l);
                continue;
            }
            if let Some(err) = resp.error {
                return Err(CallError::Agent(err));
            }
            let value = resp.result.unwrap_or(serde_json::Value::Null);
            return serde_json::from_value(value).map_err(|e| {
                TransportError::BadResponse { node: self.node.clone(), message: e.to_string(), line: line.chars().take(200).collect() }
                    .into()
            });
        }
    }

    async fn died(&mut self, source: std::io::Error) -> CallError {
        let stderr = self.link.diagnostics().await;
        if stderr.trim().is_empty() {
            TransportError::Io { node: self.node.clone(), source }.into()
        } else {
            TransportError::AgentExited { node: self.node.clone(), stderr }.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_from_a_newer_agent_is_refused() {
        let ok = HelloResult { protocol: PROTOCOL_VERSION, agent: "x".into(), plan_version: crate::plan::PLAN_VERSION, daemon: false };
        assert!(check_hello(&ok).is_ok());
        let newer = HelloResult { protocol: PROTOCOL_VERSION + 1, ..ok.clone() };
        let e = check_hello(&newer).unwrap_err();
        assert_eq!(e.code, crate::proto::ErrorCode::ProtocolMismatch);
        assert!(e.message.contains("same mcp release"));
        let newer_plan = HelloResult { plan_version: 2, ..ok };
        assert!(check_hello(&newer_plan).is_err());
    }
}
