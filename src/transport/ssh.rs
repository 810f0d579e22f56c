//! Remote nodes: russh to `host[:port]` (a node's addresses tried in order, the same host key
//! required at each), host key verified against known_hosts, key auth
//! (ssh-agent, then identity files), then exec of the node's agent command, whose stdio carries
//! the protocol. Works unchanged under an authorized_keys `command="mcp-agent rpc",restrict`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{decode_secret_key, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::tcp::QuickAck;
use super::known_hosts::{fingerprint, HostKeyStatus, KnownHosts};
use super::{CallError, Link, Session, Transport, TransportError};
use crate::node::NodeConfig;

pub const DEFAULT_AGENT_COMMAND: &str = "mcp-agent rpc";

/// Settings shared by every SSH node.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// TCP connect plus SSH handshake and authentication.
    pub connect_timeout: Duration,
    /// Longest silence from the agent during one request.
    pub request_timeout: Duration,
    pub known_hosts: KnownHosts,
}

impl SshOptions {
    pub fn for_user() -> SshOptions {
        SshOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            known_hosts: KnownHosts::for_user(),
        }
    }
}

pub struct SshTransport {
    node: String,
    /// The node's addresses, in the order they are tried.
    targets: Vec<(String, u16)>,
    user: String,
    identities: Vec<PathBuf>,
    explicit_identity: bool,
    agent_command: String,
    opts: SshOptions,
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn parse_address(addr: &str) -> Result<(String, u16), String> {
    let bad = || format!("{addr:?} is not an address; expected host[:port] or [ipv6]:port");
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        return match tail {
            "" => Ok((host.to_string(), 22)),
            t => Ok((host.to_string(), t.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad)?)),
        };
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        Some(_) => Ok((addr.to_string(), 22)), // a bare IPv6 address
        None if !addr.is_empty() => Ok((addr.to_string(), 22)),
        None => Err(bad()),
    }
}

/// What went wrong at one address, without the node's name (said once, before the list).
fn cause_of(e: &TransportError) -> String {
    match e {
        TransportError::Connect { source, .. } => source.to_string(),
        TransportError::Timeout { secs, .. } => format!("no answer within {secs}s"),
        TransportError::Ssh { message, .. } => format!("SSH failed: {message}"),
        other => other.to_string(),
    }
}

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| if unsafe { libc::geteuid() } == 0 { "root".into() } else { "nobody".into() })
}

/// The key the server showed and what the known-hosts files said of it.
type Seen = Arc<Mutex<Option<(PublicKey, HostKeyStatus)>>>;

struct Client {
    known: KnownHosts,
    targets: Vec<(String, u16)>,
    /// Which of `targets` this connection goes to.
    at: usize,
    seen: Seen,
    /// Only look at the key (for `mcp login`): never continue.
    capture_only: bool,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let status = self.known.check_node(&self.targets, self.at, key);
        let ok = status == HostKeyStatus::Known && !self.capture_only;
        *self.seen.lock().expect("not poisoned") = Some((key.clone(), status));
        Ok(ok)
    }
}

impl SshTransport {
    pub fn new(node: &NodeConfig, opts: SshOptions) -> Result<SshTransport, TransportError> {
        let targets = node
            .ssh_addresses()
            .into_iter()
            .map(parse_address)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| TransportError::Config { node: node.name.clone(), message: why })?;
        if targets.is_empty() {
            return Err(TransportError::Config { node: node.name.clone(), message: "no address to reach it at".into() });
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let (identities, explicit_identity) = match &node.identity {
            Some(p) => (vec![p.clone()], true),
            None => (["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|f| home.join(".ssh").join(f)).collect(), false),
        };
        Ok(SshTransport {
            node: node.name.clone(),
            targets,
            user: node.user.clone().unwrap_or_else(local_user),
            identities,
            explicit_identity,
            agent_command: node.agent.clone().unwrap_or_else(|| DEFAULT_AGENT_COMMAND.into()),
            opts,
        })
    }

    /// The node's first address, `host:port`.
    pub fn address(&self) -> String {
        self.address_at(0)
    }

    fn address_at(&self, at: usize) -> String {
        let (host, port) = &self.targets[at];
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    pub fn known_hosts(&self) -> &KnownHosts {
        &self.opts.known_hosts
    }

    /// The `at`th address as (host, port).
    pub fn host_port(&self, at: usize) -> (&str, u16) {
        (&self.targets[at].0, self.targets[at].1)
    }

    /// The client config for this host: the host key types known_hosts records for it (at
    /// any of its addresses) are asked for first (as OpenSSH does), so a host with several
    /// keys shows the recorded one.
    fn config(&self) -> Arc<client::Config> {
        let mut recorded = Vec::new();
        for (host, port) in &self.targets {
            for a in self.opts.known_hosts.recorded_algorithms(host, *port) {
                if !recorded.contains(&a) {
                    recorded.push(a);
                }
            }
        }
        let mut preferred = russh::Preferred::default();
        preferred.key = host_key_order(&preferred.key, &recorded).into();
        Arc::new(client::Config {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            preferred,
            ..Default::default()
        })
    }

    /// TCP + SSH handshake with the `at`th address, within `budget`. The server key the
    /// handler saw is returned either way.
    async fn connect_raw(&self, at: usize, capture_only: bool, budget: Duration) -> (Result<Handle<Client>, TransportError>, Seen) {
        let seen: Seen = Arc::new(Mutex::new(None));
        let handler = Client { known: self.opts.known_hosts.clone(), targets: self.targets.clone(), at, seen: seen.clone(), capture_only };
        let (host, port) = self.host_port(at);
        let connect = async {
            let stream = QuickAck::connect(host, port).await.map_err(russh::Error::IO)?;
            client::connect_stream(self.config(), stream, handler).await
        };
        let res = match tokio::time::timeout(budget, connect).await {
            Err(_) => Err(TransportError::Timeout {
                node: self.node.clone(),
                what: format!("connecting to {}", self.address_at(at)),
                secs: budget.as_secs_f64().ceil() as u64,
            }),
            Ok(Ok(handle)) => Ok(handle),
            Ok(Err(russh::Error::IO(source))) => {
                Err(TransportError::Connect { node: self.node.clone(), address: self.address_at(at), source })
            }
            Ok(Err(other)) => Err(TransportError::Ssh { node: self.node.clone(), message: other.to_string() }),
        };
        (res, seen)
    }

    /// Try the node's addresses in order, all within the connect timeout (each gets an even
    /// share of what is left, so a dead first address leaves time for the next): the first
    /// that completes the SSH handshake answers. A host key that is refused ends the search:
    /// it is never "solved" by another address. Returns the handle (None when `capture_only`)
    /// with the key the server showed, its verdict, and which address answered.
    async fn reach(&self, capture_only: bool) -> Result<(Option<Handle<Client>>, PublicKey, HostKeyStatus, usize), TransportError> {
        let deadline = tokio::time::Instant::now() + self.opts.connect_timeout;
        let mut failures: Vec<(usize, TransportError)> = Vec::new();
        for at in 0..self.targets.len() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let budget = left / (self.targets.len() - at) as u32;
            let (res, seen) = self.connect_raw(at, capture_only, budget).await;
            let verdict = seen.lock().expect("not poisoned").clone();
            match (res, verdict) {
                (Ok(handle), Some((key, status))) => return Ok((Some(handle), key, status, at)),
                (_, Some((key, status))) if capture_only => return Ok((None, key, status, at)),
                // The key was refused by us: say why, in detail.
                (Err(_), Some((key, status))) if status != HostKeyStatus::Known => return Err(self.key_error(&key, &status, at)),
                (Ok(_), None) => {
                    failures.push((at, TransportError::Ssh { node: self.node.clone(), message: "the server showed no host key".into() }))
                }
                (Err(e), _) => failures.push((at, e)),
            }
            if at + 1 < self.targets.len() {
                let (_, e) = failures.last().expect("just pushed");
                tracing::info!(node = %self.node, address = %self.address_at(at), error = %e, "cannot reach this address; trying the next");
            }
        }
        if failures.len() == 1 {
            return Err(failures.pop().expect("one").1);
        }
        let tried = failures.iter().map(|(at, e)| format!("{}: {}", self.address_at(*at), cause_of(e))).collect();
        Err(TransportError::Unreachable { node: self.node.clone(), tried })
    }

    /// Connect with the host key verified; which address answered.
    async fn handshake(&self) -> Result<(Handle<Client>, usize), TransportError> {
        let (handle, _, _, at) = self.reach(false).await?;
        tracing::info!(node = %self.node, address = %self.address_at(at), "connected");
        Ok((handle.expect("a handle unless capture_only"), at))
    }

    /// The server's host key, what the known-hosts files say of it (at any of the node's
    /// addresses), and which address answered, without logging in.
    pub async fn probe_host_key(&self) -> Result<(PublicKey, HostKeyStatus, usize), TransportError> {
        let (_, key, status, at) = self.reach(true).await?;
        Ok((key, status, at))
    }

    fn key_error(&self, key: &PublicKey, status: &HostKeyStatus, at: usize) -> TransportError {
        let fp = fingerprint(key);
        let algorithm = key.algorithm().to_string();
        match status {
            HostKeyStatus::Changed { file, line } => TransportError::HostKeyChanged {
                node: self.node.clone(),
                address: self.address_at(at),
                algorithm,
                fingerprint: fp,
                file: file.clone(),
                line: *line,
            },
            HostKeyStatus::Revoked { file, line } => TransportError::HostKeyRevoked {
                node: self.node.clone(),
                address: self.address_at(at),
                fingerprint: fp,
                file: file.clone(),
                line: *line,
            },
            HostKeyStatus::Unknown | HostKeyStatus::Known => TransportError::HostKeyUnknown {
                node: self.node.clone(),
                address: self.address_at(at),
                algorithm,
                fingerprint: fp,
            },
        }
    }

    async fn authenticate(&self, handle: &mut Handle<Client>, at: usize) -> Result<(), TransportError> {
        let ssh_err = |e: russh::Error| TransportError::Ssh { node: self.node.clone(), message: e.to_string() };
        let rsa_hash = handle.best_supported_rsa_hash().await.map_err(ssh_err)?.flatten();
        let mut tried = Vec::new();
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            match AgentClient::connect_env().await {
                Ok(mut agent) => {
                    let keys = agent.request_identities().await.unwrap_or_default();
                    for key in keys {
                        let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
                        let fp = fingerprint(&key);
                        match handle.authenticate_publickey_with(&self.user, key, hash, &mut agent).await {
                            Ok(r) if r.success() => return Ok(()),
                            Ok(_) => tried.push(format!("ssh-agent key {fp}")),
                            Err(e) => tried.push(format!("ssh-agent key {fp} ({e})")),
                        }
                    }
                    if tried.is_empty() {
                        tried.push("ssh-agent (no keys)".into());
                    }
                }
                Err(e) => tried.push(format!("ssh-agent ({e})")),
            }
        }
        for path in &self.identities {
            if !path.exists() {
                if self.explicit_identity {
                    tried.push(format!("{} (does not exist)", path.display()));
                }
                continue;
            }
            let key = match read_identity(path) {
                Ok(k) => k,
                Err(why) => {
                    tried.push(format!("{} ({why})", path.display()));
                    continue;
                }
            };
            let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
            let res = handle
                .authenticate_publickey(&self.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(ssh_err)?;
            if res.success() {
                return Ok(());
            }
            tried.push(path.display().to_string());
        }
        Err(TransportError::AuthRefused { node: self.node.clone(), user: self.user.clone(), address: self.address_at(at), tried })
    }

    async fn open_session(&self) -> Result<Session, TransportError> {
        let (mut handle, at) = self.handshake().await?;
        tokio::time::timeout(self.opts.connect_timeout, self.authenticate(&mut handle, at))
            .await
            .map_err(|_| TransportError::Timeout {
                node: self.node.clone(),
                what: format!("authenticating to {}", self.address_at(at)),
                secs: self.opts.connect_timeout.as_secs(),
            })??;
        let ssh_err = |e: russh::Error| TransportError::Ssh { node: self.node.clone(), message: e.to_string() };
        let channel = handle.channel_open_session().await.map_err(ssh_err)?;
        channel.exec(true, self.agent_command.as_bytes()).await.map_err(ssh_err)?;
        let (mut read, write) = channel.split();
        let writer = write.make_writer();
        let (mut to_reader, reader) = tokio::io::duplex(256 * 1024);
        let stderr = Arc::new(Mutex::new(String::new()));
        let exit = Arc::new(Mutex::new(None::<u32>));
        let (err2, exit2) = (stderr.clone(), exit.clone());
        let pump = tokio::spawn(async move {
            let mut open = true;
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } if open => {
                        open = to_reader.write_all(&data).await.is_ok();
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        err2.lock().expect("not poisoned").push_str(&String::from_utf8_lossy(&data));
                    }
                    ChannelMsg::ExitStatus { exit_status } => *exit2.lock().expect("not poisoned") = Some(exit_status),
                    ChannelMsg::Eof => {
                        let _ = to_reader.shutdown().await;
                        open = false;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let _ = to_reader.shutdown().await;
        });
        let link = SshLink { _handle: handle, _write: write, pump: Some(pump), stderr, exit, command: self.agent_command.clone() };
        let session = Session::start(&self.node, Box::new(reader), Box::new(writer), Box::new(link))
            .await
            .map_err(|e| match e {
                CallError::Transport(t) => t,
                CallError::Agent(error) => TransportError::Handshake { node: self.node.clone(), error },
            })?;
        Ok(session.with_idle_timeout(self.opts.request_timeout).with_address(self.address_at(at)))
    }
}

struct SshLink {
    _handle: Handle<Client>,
    _write: russh::ChannelWriteHalf<client::Msg>,
    pump: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    exit: Arc<Mutex<Option<u32>>>,
    command: String,
}

impl Link for SshLink {
    fn diagnostics(&mut self) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move {
            if let Some(p) = self.pump.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
            }
            let mut text = self.stderr.lock().expect("not poisoned").trim().to_string();
            match *self.exit.lock().expect("not poisoned") {
                Some(127) => text.push_str(&format!(
                    " (exit 127: `{}` was not found on the node; install mcp-agent there or set `agent` for the node in mcp.toml)",
                    self.command
                )),
                Some(0) | None => {}
                Some(code) => text.push_str(&format!(" (exit {code})")),
            }
            text
        })
    }
}

impl Transport for SshTransport {
    fn open(&self) -> Pin<Box<dyn Future<Output = Result<Session, TransportError>> + Send + '_>> {
        Box::pin(self.open_session())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("rift").unwrap(), ("rift".into(), 22));
        assert_eq!(parse_address("10.0.0.1:9444").unwrap(), ("10.0.0.1".into(), 9444));
        assert_eq!(parse_address("[::1]:2222").unwrap(), ("::1".into(), 2222));
        assert_eq!(parse_address("[::1]").unwrap(), ("::1".into(), 22));
        assert_eq!(parse_address("fe80::1").unwrap(), ("fe80::1".into(), 22));
        for bad in ["", "h:", "h:x", "h:70000", "[::1", "[::1]x"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}

/// `default` with the algorithms of the `recorded` key types first (every RSA signature
/// algorithm for a recorded RSA key), the rest after in their order.
pub fn host_key_order(default: &[russh::keys::Algorithm], recorded: &[russh::keys::Algorithm]) -> Vec<russh::keys::Algorithm> {
    let matches = |a: &russh::keys::Algorithm| recorded.iter().any(|r| r == a || (r.clone().is_rsa() && a.clone().is_rsa()));
    let (mut first, rest): (Vec<_>, Vec<_>) = default.iter().cloned().partition(|a| matches(a));
    first.extend(rest);
    first
}

#[cfg(test)]
mod key_order_tests {
    use super::*;
    use russh::keys::{Algorithm, EcdsaCurve};

    #[test]
    fn recorded_types_first() {
        let default = [Algorithm::Ed25519, Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 }, Algorithm::Rsa { hash: None }];
        let ecdsa = Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 };
        assert_eq!(host_key_order(&default, std::slice::from_ref(&ecdsa)), vec![ecdsa.clone(), Algorithm::Ed25519, Algorithm::Rsa { hash: None }]);
        assert_eq!(host_key_order(&default, &[]), default.to_vec());
        assert_eq!(host_key_order(&default, &[Algorithm::Rsa { hash: Some(russh::keys::HashAlg::Sha512) }])[0], Algorithm::Rsa { hash: None });
    }
}

/// Longest identity file read (OpenSSH keys are a few KiB).
const MAX_IDENTITY: u64 = 1 << 20;

/// An identity file, refused (as OpenSSH does) when others may read it: its mode is checked
/// on the open descriptor, and the key is read from that same descriptor.
fn read_identity(path: &std::path::Path) -> Result<PrivateKey, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("refused: mode {mode:04o} lets others read the private key; chmod 600 {}", path.display()));
    }
    let mut text = String::new();
    f.take(MAX_IDENTITY).read_to_string(&mut text).map_err(|e| format!("cannot read: {e}"))?;
    decode_secret_key(&text, None).map_err(|e| format!("cannot load: {e}; add it to ssh-agent if it has a passphrase"))
}
