//! One health probe, run by the agent: an HTTP(S) request, a TCP connect, or a command inside
//! the container (through the runtime). Everything that comes back is outside input: reads are
//! bounded and the whole probe has one deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Instant;

use crate::plan::health::Host;
use crate::plan::{HealthCheck, Probe};
use crate::runtime::registry_client::{read_response, system_roots, Deadline};
use crate::runtime::Runtime;

/// The largest CA file a health check may name.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Probe `id` once: `Ok(())` when healthy, else why not (one line, nothing from a response body).
pub fn run(check: &HealthCheck, runtime: &dyn Runtime, id: &str) -> Result<(), String> {
    let end = Instant::now() + check.timeout;
    match &check.probe {
        Probe::Tcp { host, port } => connect(host, *port, check).map(drop),
        Probe::Http { tls, host, port, path, ca } => {
            let tcp = connect(host, *port, check)?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: mcp-agent health\r\nConnection: close\r\n\r\n");
            let what = "no answer within the health check's timeout";
            let status = if *tls {
                let conn = rustls::ClientConnection::new(tls_config(ca.as_deref())?, server_name(host)).map_err(|e| format!("TLS: {e}"))?;
                let mut stream = Deadline { inner: rustls::StreamOwned::new(conn, tcp), end, what };
                stream.inner.write_all(request.as_bytes()).map_err(|e| format!("TLS: {e}"))?;
                read_response(&mut stream, true)?.status
            } else {
                let mut stream = Deadline { inner: tcp, end, what };
                stream.inner.write_all(request.as_bytes()).map_err(|e| format!("sending the request: {e}"))?;
                read_response(&mut stream, true)?.status
            };
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET {path} answered HTTP {status}"))
            }
        }
        Probe::Cmd(argv) => match runtime.exec_check(id, argv, check.timeout) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        },
    }
}

fn connect(host: &Host, port: u16, check: &HealthCheck) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(host.ip(), port);
    let tcp = TcpStream::connect_timeout(&addr, check.timeout).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(check.timeout));
    let _ = tcp.set_write_timeout(Some(check.timeout));
    Ok(tcp)
}

fn server_name(host: &Host) -> rustls::pki_types::ServerName<'static> {
    match host {
        Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
        Host::Localhost => rustls::pki_types::ServerName::try_from("localhost").expect("a valid DNS name"),
    }
}

/// Roots for an https probe: the CA file the check names, else the system's bundle.
fn tls_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca {
        None => system_roots(),
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let pem = read_ca(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                // What the file holds is never echoed: it may be any file on the node.
                let cert = cert.map_err(|_| format!("{path} is not a PEM certificate"))?;
                roots.add(cert).map_err(|_| format!("{path} holds a certificate rustls cannot use"))?;
            }
            if roots.is_empty() {
                return Err(format!("{path} holds no PEM certificate"));
            }
            roots
        }
    };
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

/// The CA file, checked on the open descriptor: a regular file (a FIFO or device would block
/// or never end), at most [`MAX_CA_BYTES`].
fn read_ca(path: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open the health check's ca {path}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_CA_BYTES {
        return Err(format!("the health check's ca {path} is not a regular file of at most 1 MiB"));
    }
    let mut pem = Vec::new();
    file.take(MAX_CA_BYTES).read_to_end(&mut pem).map_err(|e| format!("reading {path}: {e}"))?;
    Ok(pem)
}
