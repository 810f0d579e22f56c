//! One health probe, run by the agent: an HTTP(S) request, a TCP connect, or a command inside
//! the container (through the runtime). Everything that comes back is outside input: reads are
//! bounded and the whole probe has one deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::plan::health::Host;
use crate::plan::{HealthCheck, Probe};
use crate::runtime::registry_client::{read_response, system_roots, Timed};
use crate::runtime::Runtime;

/// The largest CA file a health check may name.
const MAX_CA_BYTES: u64 = 1 << 20;

/// The longest reason a failed probe gives (it may quote what the container printed).
const MAX_REASON: usize = 200;

/// Probe `id` once: `Ok(())` when healthy, else why not: one printable line of at most
/// [`MAX_REASON`] characters, nothing from a response body.
pub fn run(check: &HealthCheck, runtime: &dyn Runtime, id: &str) -> Result<(), String> {
    probe(check, runtime, id).map_err(|why| one_line(&why))
}

fn probe(check: &HealthCheck, runtime: &dyn Runtime, id: &str) -> Result<(), String> {
    match &check.probe {
        Probe::Tcp { host, port } => connect(&target(host, *port, runtime, id)?, check.timeout).map(drop),
        Probe::Http { tls, host, port, path, ca } => http(check, *tls, host, &target(host, *port, runtime, id)?, path, ca.as_deref()),
        Probe::Cmd(argv) => match runtime.exec_check(id, argv, check.timeout) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// Where a probe connects: an address, from the node's network or from inside a namespace.
struct Target {
    addr: SocketAddr,
    netns: Option<std::fs::File>,
}

/// `self` is the instance's own address, which its runtime tells (with where to reach it from).
fn target(host: &Host, port: u16, runtime: &dyn Runtime, id: &str) -> Result<Target, String> {
    if let Some(ip) = host.ip() {
        return Ok(Target { addr: SocketAddr::new(ip, port), netns: None });
    }
    match runtime.probe_route(id) {
        Ok(Some(route)) => Ok(Target { addr: SocketAddr::new(route.address, port), netns: Some(route.netns) }),
        Ok(None) => Err("`self` has no address to probe here (only a VM on an isolated network has one)".into()),
        Err(e) => Err(format!("reaching the instance's network: {e}")),
    }
}

/// GET `path`; a 2xx or 3xx answer within the check's timeout is healthy.
fn http(check: &HealthCheck, tls: bool, host: &Host, target: &Target, path: &str, ca: Option<&str>) -> Result<(), String> {
    // One deadline for connect, handshake, request and answer.
    let started = std::time::Instant::now();
    let tcp = connect(target, check.timeout)?;
    let left = check.timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    let timed = Timed::new(tcp, left, "no answer within the health check's timeout");
    let authority = match host {
        Host::Localhost => format!("localhost:{}", target.addr.port()),
        _ => target.addr.to_string(),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: mcp-agent health\r\nConnection: close\r\n\r\n");
    let status = if tls {
        let conn = rustls::ClientConnection::new(tls_config(ca)?, server_name(host, target)).map_err(|e| format!("TLS: {e}"))?;
        let mut stream = rustls::StreamOwned::new(conn, timed);
        stream.write_all(request.as_bytes()).map_err(|e| format!("TLS: {e}"))?;
        read_response(&mut stream, true)?.status
    } else {
        let mut stream = timed;
        stream.write_all(request.as_bytes()).map_err(|e| format!("sending the request: {e}"))?;
        read_response(&mut stream, true)?.status
    };
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} answered HTTP {status}"))
    }
}

/// Control characters (a container's output, a peer's bytes) become spaces; long text is cut.
fn one_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_REASON).collect();
    if s.chars().count() > MAX_REASON {
        out.push_str(" ...");
    }
    out
}

fn connect(target: &Target, timeout: Duration) -> Result<TcpStream, String> {
    let addr = target.addr;
    let Some(netns) = &target.netns else {
        return TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"));
    };
    // A socket stays in the namespace it was made in: connected from inside the probe
    // namespace, used from here.
    crate::runtime::netns::in_netns(netns, "probe-netns", move || {
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"))
    })
}

fn server_name(host: &Host, target: &Target) -> rustls::pki_types::ServerName<'static> {
    match host {
        Host::Localhost => rustls::pki_types::ServerName::try_from("localhost").expect("a valid DNS name"),
        _ => rustls::pki_types::ServerName::IpAddress(target.addr.ip().into()),
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

/// The CA file. Its type is checked before it is opened for reading (opening a device can
/// act: a watchdog arms, a tape rewinds): an `O_PATH` descriptor first, `fstat` on it, then
/// the same inode opened through that descriptor, checked again, at most [`MAX_CA_BYTES`]
/// read. Every failure reads the same, so probes do not tell which paths exist on the node.
fn read_ca(path: &str) -> Result<Vec<u8>, String> {
    let unusable = || format!("the health check's ca {path} is not a readable regular PEM file of at most 1 MiB");
    let handle = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path).map_err(|_| unusable())?;
    let regular = |f: &std::fs::File| f.metadata().is_ok_and(|m| m.is_file() && m.len() <= MAX_CA_BYTES);
    if !regular(&handle) {
        return Err(unusable());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|_| unusable())?;
    if !regular(&file) {
        return Err(unusable());
    }
    let mut pem = Vec::new();
    file.take(MAX_CA_BYTES).read_to_end(&mut pem).map_err(|_| unusable())?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that sends `first`, then a byte every 100 ms for 30 s: slower than any timeout.
    fn trickler(first: &'static [u8]) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(first);
            for _ in 0..300 {
                if s.write_all(b"0").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        port
    }

    #[test]
    fn a_trickling_peer_is_given_up_at_the_timeout_also_inside_the_tls_handshake() {
        let check = crate::plan::Health { tcp: Some("127.0.0.1:1".into()), timeout: Some("500ms".into()), ..Default::default() }.check().unwrap();
        let local = Host::Ip([127, 0, 0, 1].into());
        let at = |port: u16| Target { addr: SocketAddr::new([127, 0, 0, 1].into(), port), netns: None };
        let e = http(&check, false, &local, &at(trickler(b"HTTP/1.1 200 OK\r\nX-Slow: ")), "/", None).unwrap_err();
        assert!(e.contains("no answer within the health check's timeout"), "{e}");
        // A TLS record header announcing 16 KiB, then the trickle: rustls waits for the record.
        let e = http(&check, true, &local, &at(trickler(&[0x16, 0x03, 0x03, 0x40, 0x00])), "/", None).unwrap_err();
        assert!(e.contains("no answer within the health check's timeout"), "{e}");
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(one_line("exit 1: a\nb\x1b[2J"), "exit 1: a b [2J");
        let long = one_line(&"x".repeat(5000));
        assert!(long.len() <= MAX_REASON + 4 && long.ends_with(" ..."), "{long}");
    }

    #[test]
    fn a_ca_must_be_a_small_regular_file_and_devices_are_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(read_ca(pem.to_str().unwrap()).is_ok());
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // A FIFO with no writer would block an open for reading: it is refused before that.
        let e = read_ca(fifo.to_str().unwrap()).unwrap_err();
        assert_eq!(e, read_ca("/no/such/file").unwrap_err().replace("/no/such/file", fifo.to_str().unwrap()), "the same words either way");
        assert!(read_ca("/dev/zero").is_err() && read_ca(dir.path().to_str().unwrap()).is_err());
    }
}
