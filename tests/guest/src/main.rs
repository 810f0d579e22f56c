//! A guest program for mcp's Nanos tests: one process, no fork (Nanos runs exactly one).
//!
//!   mcp-guest serve PORT DIR                 HTTP/1.0 file server for DIR
//!   mcp-guest serve-tls PORT DIR CERT KEY    the same over TLS (built with `--features tls`)
//!   mcp-guest probe IP:PORT                  once a second: "probe ok: <body>" or "probe failed"
//!
//! Every mode first prints one line with its arguments and $GREETING, so a test can read on
//! the console what reached the program.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let greeting = std::env::var("GREETING").unwrap_or_default();
    println!("mcp-guest: started (greeting={greeting} args={})", args[1..].join(" "));
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    match arg(1).as_str() {
        "serve" => serve(&arg(2), Path::new(&arg(3)), None),
        "serve-tls" => serve(&arg(2), Path::new(&arg(3)), Some((PathBuf::from(arg(4)), PathBuf::from(arg(5))))),
        "probe" => probe(&arg(2)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: mcp-guest serve PORT DIR | serve-tls PORT DIR CERT KEY | probe IP:PORT");
    std::process::exit(2)
}

fn serve(port: &str, dir: &Path, tls: Option<(PathBuf, PathBuf)>) {
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).unwrap_or_else(|e| {
        eprintln!("mcp-guest: bind {port}: {e}");
        std::process::exit(1)
    });
    let tls = tls.map(|(cert, key)| tls::config(&cert, &key));
    println!("mcp-guest: serving {} on {port}{}", dir.display(), if tls.is_some() { " (tls)" } else { "" });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let result = match &tls {
            None => answer(conn, dir),
            Some(config) => tls::answer(config, conn, dir),
        };
        if let Err(e) = result {
            println!("mcp-guest: connection: {e}");
        }
    }
}

/// One request on `stream`: GET of a file under `dir` ("/" is index.html).
fn answer<S: Read + Write>(mut stream: S, dir: &Path) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&mut stream).take(8192)).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let rel = Path::new(path.trim_start_matches('/'));
    let rel = if rel.as_os_str().is_empty() { Path::new("index.html") } else { rel };
    let body = if rel.components().all(|c| matches!(c, Component::Normal(_))) { std::fs::read(dir.join(rel)).ok() } else { None };
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"not found\n".to_vec()),
    };
    write!(stream, "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    stream.write_all(&body)?;
    stream.flush()
}

fn probe(target: &str) {
    let addr: std::net::SocketAddr = target.parse().unwrap_or_else(|_| usage());
    loop {
        // An address nobody answers on (another bridge) must fail within the round, not
        // after TCP's own minutes of retries.
        let got = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match got {
            Ok(out) if out.starts_with("HTTP/1.0 200") => {
                println!("probe ok: {}", out.rsplit("\r\n\r\n").next().unwrap_or("").trim())
            }
            _ => println!("probe failed"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::net::TcpStream;
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    pub type Config = Arc<rustls::ServerConfig>;

    pub fn config(cert: &Path, key: &Path) -> Config {
        let fail = |what: &str, e: String| -> ! {
            eprintln!("mcp-guest: {what}: {e}");
            std::process::exit(1)
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect())
            .unwrap_or_else(|e| fail(&cert.display().to_string(), e.to_string()));
        let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| fail(&key.display().to_string(), e.to_string()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key).map_err(Into::into))
            .unwrap_or_else(|e: rustls::Error| fail("tls config", e.to_string()));
        Arc::new(config)
    }

    pub fn answer(config: &Config, mut tcp: TcpStream, dir: &Path) -> std::io::Result<()> {
        let mut conn = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
        let stream = rustls::Stream::new(&mut conn, &mut tcp);
        super::answer(stream, dir)?;
        conn.send_close_notify();
        conn.complete_io(&mut tcp).map(|_| ())
    }
}

#[cfg(not(feature = "tls"))]
mod tls {
    use std::net::TcpStream;
    use std::path::Path;

    pub type Config = ();

    pub fn config(_: &Path, _: &Path) -> Config {
        eprintln!("mcp-guest: built without the tls feature");
        std::process::exit(2)
    }

    pub fn answer(_: &Config, _: TcpStream, _: &Path) -> std::io::Result<()> {
        unreachable!()
    }
}
