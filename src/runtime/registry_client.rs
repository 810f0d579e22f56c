//! Ask a registry what a tag points at now, without pulling: `HEAD /v2/<repo>/manifests/<tag>`
//! over HTTPS (rustls; the system's CAs plus the registry's own from podman's certs dir), with
//! the node's credentials (Basic, or a Bearer token from the registry's token service). One
//! request per answer, bounded reads and deadlines everywhere: a registry is outside input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use data_encoding::BASE64;

use super::registries::Cause;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 64 * 1024;
const MAX_BODY: u64 = 1 << 20;
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `host[:port]/repo[:tag|@digest]` split the way registries see it (short names go to
/// Docker Hub's `registry-1.docker.io`, `library/` for single names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub reference: String,
}

pub fn parse_reference(image: &str) -> Reference {
    let (registry, rest) = match super::registries::registry_of(image) {
        Some(r) => (r.to_string(), &image[r.len() + 1..]),
        None => ("registry-1.docker.io".to_string(), image),
    };
    let (name, reference) = match rest.split_once('@') {
        Some((n, d)) => (n.to_string(), d.to_string()),
        None => match rest.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((n, t)) => (n.to_string(), t.to_string()),
            None => (rest.to_string(), "latest".to_string()),
        },
    };
    let repository = if registry == "registry-1.docker.io" && !name.contains('/') { format!("library/{name}") } else { name };
    Reference { registry, repository, reference }
}

/// The auth file's credentials for `registry` (`auths.<registry>.auth` = base64 of user:pass).
pub fn credentials(auth_json: &str, registry: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(auth_json).ok()?;
    let key = if registry == "registry-1.docker.io" { "docker.io" } else { registry };
    let encoded = v.get("auths")?.get(key).or_else(|| v.get("auths")?.get(registry))?.get("auth")?.as_str()?;
    let decoded = String::from_utf8(BASE64.decode(encoded.as_bytes()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The parameters of a `WWW-Authenticate` challenge: scheme and `key="value"` pairs.
pub fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let (value, tail) = match after.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((v, t)) => (v.to_string(), t),
                None => (q.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, t)) => (v.trim().to_string(), t),
                None => (after.trim().to_string(), ""),
            },
        };
        params.push((key.trim().trim_start_matches(',').trim().to_ascii_lowercase(), value));
        rest = tail.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// One HTTP response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Read a response from `r`: headers bounded, body by Content-Length or chunked, bounded.
pub fn read_response(r: impl Read, head_only: bool) -> Result<Response, String> {
    let mut r = BufReader::new(r.take(MAX_HEADERS as u64 + MAX_BODY + 64 * 1024));
    let mut line = String::new();
    let mut seen = 0usize;
    let mut next_line = |r: &mut BufReader<_>, line: &mut String| -> Result<(), String> {
        line.clear();
        let n = r.read_line(line).map_err(|e| format!("reading the response: {e}"))?;
        seen += n;
        if n == 0 || seen > MAX_HEADERS {
            return Err("the registry's response ended early or its headers are too long".into());
        }
        Ok(())
    };
    next_line(&mut r, &mut line)?;
    // What answered is outside input: never echoed.
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("the answer is not an HTTP/1.x response")?;
    let mut headers = Vec::new();
    loop {
        next_line(&mut r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut resp = Response { status, headers, body: Vec::new() };
    if head_only || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).map_err(|_| "bad chunk size".to_string())?;
            if n == 0 {
                break;
            }
            if n > MAX_BODY as usize || resp.body.len() + n > MAX_BODY as usize {
                return Err("the registry's response body is larger than 1 MiB".into());
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len = resp.header("content-length").and_then(|l| l.parse::<u64>().ok());
        let mut limited = (&mut r).take(len.unwrap_or(MAX_BODY).min(MAX_BODY));
        limited.read_to_end(&mut resp.body).map_err(|e| e.to_string())?;
    }
    Ok(resp)
}

/// The system's CA bundle (Debian's, Fedora's or NixOS's place), as rustls roots.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for bundle in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"] {
        add_pem_file(&mut roots, Path::new(bundle));
    }
    roots
}

fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    if let Ok(iter) = CertificateDer::pem_file_iter(path) {
        for cert in iter.flatten() {
            let _ = roots.add(cert);
        }
    }
}

/// TLS roots: the system's bundle and the registry's CA files from podman's certs dir.
fn tls_config(certs_dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = system_roots();
    if let Ok(entries) = std::fs::read_dir(certs_dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "crt") {
                add_pem_file(&mut roots, &e.path());
            }
        }
    }
    Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// One HTTPS request to `host[:port]`, answered and closed.
fn request(tls: &Arc<rustls::ClientConfig>, host_port: &str, method: &str, path: &str, auth: Option<&str>) -> Result<Response, Cause> {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, p.parse::<u16>().unwrap_or(443)),
        _ => (host_port, 443),
    };
    let addr = (host, port).to_socket_addrs().map_err(|_| Cause::Unreachable)?.next().ok_or(Cause::Unreachable)?;
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|_| Cause::Unreachable)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| Cause::Other(format!("{host}: {e}")))?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(|e| Cause::Other(e.to_string()))?;
    let timed = Timed::new(tcp, TIMEOUT * 3, "the registry took longer than 30 s to answer");
    let mut stream = rustls::StreamOwned::new(conn, timed);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nAccept: {ACCEPT}\r\nUser-Agent: mcp-agent\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(tls_cause)?;
    read_response(&mut stream, method == "HEAD").map_err(|e| certificate_or(&e, Cause::Other(e.clone())))
}

/// A TCP stream with one deadline for everything done on it: before every read and write the
/// socket's timeout is set to the time left, so a peer trickling a byte at a time (during the
/// TLS handshake too: rustls reads the socket in loops of its own) cannot hold the agent past it.
pub struct Timed {
    tcp: TcpStream,
    end: std::time::Instant,
    /// The error's text once the deadline has passed.
    what: &'static str,
}

impl Timed {
    pub fn new(tcp: TcpStream, limit: Duration, what: &'static str) -> Timed {
        Timed { tcp, end: std::time::Instant::now() + limit, what }
    }

    fn left(&self) -> std::io::Result<Duration> {
        let left = self.end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, self.what));
        }
        Ok(left)
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf).map_err(|e| if e.kind() == std::io::ErrorKind::WouldBlock { std::io::Error::new(std::io::ErrorKind::TimedOut, self.what) } else { e })
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn tls_cause(e: std::io::Error) -> Cause {
    certificate_or(&e.to_string(), Cause::Unreachable)
}

/// A TLS failure over the registry's certificate is an unknown CA; anything else `other`.
fn certificate_or(error: &str, other: Cause) -> Cause {
    if error.contains("UnknownIssuer") || error.contains("certificate") {
        Cause::UnknownCa
    } else {
        other
    }
}

/// `https://host/path?query` -> (host[:port], /path?query).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    Some((host.to_string(), path))
}

/// Query-string escaping for the token request's service and scope.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' | b',' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The digest `image`'s tag points at in its registry now.
pub fn current_digest(image: &str, creds: Option<(String, String)>, certs_dir: &Path) -> Result<String, Cause> {
    let r = parse_reference(image);
    let tls = tls_config(certs_dir);
    let path = format!("/v2/{}/manifests/{}", r.repository, r.reference);
    let basic = creds.as_ref().map(|(u, p)| format!("Basic {}", BASE64.encode(format!("{u}:{p}").as_bytes())));
    let mut resp = request(&tls, &r.registry, "HEAD", &path, None)?;
    if resp.status == 401 {
        let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
        let (scheme, params) = parse_challenge(&challenge);
        let auth = match scheme.as_str() {
            "basic" => basic.clone().ok_or(Cause::Unauthorized)?,
            "bearer" => {
                let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let realm = get("realm").ok_or_else(|| Cause::Other(format!("a Bearer challenge without realm: {challenge}")))?;
                let (host, mut token_path) = split_url(&realm).ok_or_else(|| Cause::Other(format!("token realm {realm} is not https")))?;
                let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                token_path.push(if token_path.contains('?') { '&' } else { '?' });
                token_path.push_str(&format!("scope={}", escape(&scope)));
                if let Some(service) = get("service") {
                    token_path.push_str(&format!("&service={}", escape(&service)));
                }
                let t = request(&tls, &host, "GET", &token_path, basic.as_deref())?;
                if t.status == 401 || t.status == 403 {
                    return Err(Cause::Unauthorized);
                }
                let v: serde_json::Value = serde_json::from_slice(&t.body).map_err(|e| Cause::Other(format!("token service: {e}")))?;
                let token = v.get("token").or_else(|| v.get("access_token")).and_then(|t| t.as_str()).ok_or_else(|| Cause::Other("token service answered no token".into()))?;
                format!("Bearer {token}")
            }
            _ => return Err(Cause::Unauthorized),
        };
        resp = request(&tls, &r.registry, "HEAD", &path, Some(&auth))?;
    }
    match resp.status {
        200 => resp
            .header("docker-content-digest")
            .filter(|d| super::registries::is_digest(d))
            .map(str::to_string)
            .ok_or_else(|| Cause::Other("the registry did not say the digest (no Docker-Content-Digest)".into())),
        401 | 403 => Err(Cause::Unauthorized),
        404 => Err(Cause::NoSuchImage),
        s => Err(Cause::Other(format!("the registry answered HTTP {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/mcp/web:v1");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.reference.as_str()), ("127.0.0.1:5000", "mcp/web", "v1"));
        let r = parse_reference("reg.example:8443/app");
        assert_eq!((r.repository.as_str(), r.reference.as_str()), ("app", "latest"));
        let r = parse_reference("busybox:1.36");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("registry-1.docker.io", "library/busybox"));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse_reference(&format!("r:1/x@{d}")).reference, d);
    }

    #[test]
    fn challenges_and_credentials() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#);
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        assert_eq!(parse_challenge(r#"Basic realm="mcp-test""#).0, "basic");
        let auth = format!(r#"{{"auths":{{"r:1":{{"auth":"{}"}}}}}}"#, BASE64.encode(b"deployer:s3:cr3t"));
        assert_eq!(credentials(&auth, "r:1"), Some(("deployer".into(), "s3:cr3t".into())));
        assert_eq!(credentials(&auth, "r:2"), None);
        assert_eq!(split_url("https://auth.example:444/token?x=1"), Some(("auth.example:444".into(), "/token?x=1".into())));
    }

    #[test]
    fn responses_are_bounded_and_chunked_bodies_read() {
        let r = read_response(&b"HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:x\r\nContent-Length: 2\r\n\r\nok"[..], false).unwrap();
        assert_eq!((r.status, r.header("docker-content-digest"), r.body.as_slice()), (200, Some("sha256:x"), &b"ok"[..]));
        let r = read_response(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..], false).unwrap();
        assert_eq!(r.body, b"abcde");
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEADERS));
        assert!(read_response(long.as_bytes(), true).is_err());
        assert!(read_response(&b"garbage\r\n\r\n"[..], true).is_err());
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n";
        assert!(read_response(&huge[..], false).is_err(), "a chunk size past the bound is an error, not an overflow");
        let banner = read_response(&b"SSH-2.0-OpenSSH_9.2 200 secret-banner\r\n\r\n"[..], true).unwrap_err();
        assert!(!banner.contains("secret"), "what answered is never echoed: {banner}");
    }
}
