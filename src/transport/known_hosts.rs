//! Host key trust: OpenSSH `known_hosts` files (plain, hashed `|1|salt|hash`, `[host]:port`,
//! wildcards, `@revoked`) plus mcp's own file, which `mcp login` writes. Pure parsing and
//! matching; only [`KnownHosts::record`] writes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{Hmac, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;

/// What the known-hosts files say of a server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// Recorded: trusted.
    Known,
    /// No key is recorded for the host.
    Unknown,
    /// A different key (of any type) is recorded: refuse loudly.
    Changed { file: PathBuf, line: usize },
    /// Marked `@revoked`.
    Revoked { file: PathBuf, line: usize },
}

/// `SHA256:...`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The name known_hosts uses for a host: `host`, or `[host]:port` off port 22.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Does one known_hosts host field (comma-separated patterns) name `name`?
pub fn field_matches(field: &str, name: &str) -> bool {
    let mut matched = false;
    for pat in field.split(',') {
        if let Some(neg) = pat.strip_prefix('!') {
            if glob(neg, name) {
                return false;
            }
        } else if pat.starts_with("|1|") {
            matched |= hashed_matches(pat, name);
        } else {
            matched |= glob(pat, name);
        }
    }
    matched
}

fn hashed_matches(pat: &str, name: &str) -> bool {
    let mut parts = pat.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
    let (Ok(salt), Ok(hash)) = (BASE64.decode(salt.as_bytes()), BASE64.decode(hash.as_bytes())) else { return false };
    let Ok(mac) = Hmac::<Sha1>::new_from_slice(&salt) else { return false };
    mac.chain_update(name.as_bytes()).verify_slice(&hash).is_ok()
}

/// `*` and `?` wildcards, as in ssh patterns.
fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// The entries of one file for `name`: (line number, marker, key). Unparsable lines, comments
/// and `@cert-authority` lines (mcp does not use host certificates) are skipped.
fn entries<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (usize, Option<&'a str>, PublicKey)> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let mut fields = line.split_whitespace().peekable();
        let marker = match fields.peek() {
            Some(f) if f.starts_with('#') => return None,
            Some(f) if f.starts_with('@') => fields.next(),
            Some(_) => None,
            None => return None,
        };
        let (Some(hosts), Some(_kind), Some(blob)) = (fields.next(), fields.next(), fields.next()) else { return None };
        if marker.is_some_and(|m| m != "@revoked") || !field_matches(hosts, name) {
            return None;
        }
        let recorded = russh::keys::parse_public_key_base64(blob).ok()?;
        Some((i + 1, marker, recorded))
    })
}

/// Check `key` for `name` against the text of one file. As in OpenSSH, one matching line
/// makes the key known even if another line differs; a differing key of any type (another
/// type too: a host that offers an RSA key where an ed25519 one is recorded is not a new
/// host) makes it changed.
pub fn check_text(text: &str, file: &Path, name: &str, key: &PublicKey) -> HostKeyStatus {
    let mut known = false;
    let mut changed = None;
    for (line, marker, recorded) in entries(text, name) {
        let same = recorded.key_data() == key.key_data();
        match marker {
            Some(_) if same => return HostKeyStatus::Revoked { file: file.to_path_buf(), line },
            Some(_) => {}
            None if same => known = true,
            None => changed = changed.or(Some(line)),
        }
    }
    // Revoked (returned above) wins, then a matching line, then a differing one.
    match (known, changed) {
        (true, _) => HostKeyStatus::Known,
        (false, Some(line)) => HostKeyStatus::Changed { file: file.to_path_buf(), line },
        (false, None) => HostKeyStatus::Unknown,
    }
}

/// The files mcp trusts, and the one `mcp login` records into.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    pub files: Vec<PathBuf>,
    pub own: PathBuf,
}

impl KnownHosts {
    /// `~/.ssh/known_hosts` and mcp's own `$XDG_CONFIG_HOME/mcp/known_hosts`.
    pub fn for_user() -> KnownHosts {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        let own = crate::node::config_dir().unwrap_or_else(|| home.join(".config/mcp")).join("known_hosts");
        KnownHosts { files: vec![home.join(".ssh/known_hosts"), own.clone()], own }
    }

    /// The verdict over all files: revoked or changed anywhere wins over known elsewhere.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
        let name = host_pattern(host, port);
        let mut verdict = HostKeyStatus::Unknown;
        for f in &self.files {
            let Ok(text) = std::fs::read_to_string(f) else { continue };
            match check_text(&text, f, &name, key) {
                bad @ (HostKeyStatus::Changed { .. } | HostKeyStatus::Revoked { .. }) => return bad,
                HostKeyStatus::Known => verdict = HostKeyStatus::Known,
                HostKeyStatus::Unknown => {}
            }
        }
        verdict
    }

    /// The verdict for a node reached at `addresses[answered]`, one of several ways to the
    /// same host: that address's own records decide; one with none takes the verdict of the
    /// node's other addresses (the same key there is known; another key there, or a revoked
    /// one, is refused): the node's host key is the same whichever address answers.
    pub fn check_node(&self, addresses: &[(String, u16)], answered: usize, key: &PublicKey) -> HostKeyStatus {
        let (host, port) = &addresses[answered];
        let own = self.check(host, *port, key);
        if own != HostKeyStatus::Unknown {
            return own;
        }
        let others: Vec<HostKeyStatus> =
            addresses.iter().enumerate().filter(|(i, _)| *i != answered).map(|(_, (h, p))| self.check(h, *p, key)).collect();
        let worst = |pick: fn(&HostKeyStatus) -> bool| others.iter().find(|s| pick(s)).cloned();
        worst(|s| matches!(s, HostKeyStatus::Revoked { .. }))
            .or_else(|| worst(|s| matches!(s, HostKeyStatus::Changed { .. })))
            .or_else(|| worst(|s| *s == HostKeyStatus::Known))
            .unwrap_or(HostKeyStatus::Unknown)
    }

    /// The key types recorded for `host:port` (not revoked), in file order: the host key
    /// algorithms to ask the server for first.
    pub fn recorded_algorithms(&self, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
        let name = host_pattern(host, port);
        let mut out = Vec::new();
        for f in &self.files {
            let Ok(text) = std::fs::read_to_string(f) else { continue };
            for (_, marker, key) in entries(&text, &name) {
                if marker.is_none() && !out.contains(&key.algorithm()) {
                    out.push(key.algorithm());
                }
            }
        }
        out
    }

    /// Append `key` for `host:port` to mcp's own file (created 0600).
    pub fn record(&self, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
        if let Some(dir) = self.own.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.own)?;
        let openssh = key.to_openssh().map_err(std::io::Error::other)?;
        // Drop any comment: "type base64".
        let mut parts = openssh.split_whitespace();
        let (kind, blob) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        writeln!(f, "{} {kind} {blob}", host_pattern(host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINkfWiwC5HVoYOmZ/a/p/i5tEeQbNU/HO7zW/HI61xqq";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIDIU5yP7ijSLUED7dMl6tQzDd8hBF+5h787IvjDC6U/o";

    fn key(b: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b).unwrap()
    }

    fn hashed(name: &str) -> String {
        let salt = b"0123456789abcdefghij";
        let mac = Hmac::<Sha1>::new_from_slice(salt).unwrap().chain_update(name.as_bytes()).finalize().into_bytes();
        format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(&mac))
    }

    #[test]
    fn plain_port_and_hashed_entries() {
        let f = Path::new("kh");
        let text = format!("# comment\n\nrift,10.0.0.1 ssh-ed25519 {ED}\n[127.0.0.1]:2222 ssh-ed25519 {ED}\n{} ssh-ed25519 {ED}\n", hashed("[h.example]:2200"));
        assert_eq!(check_text(&text, f, "rift", &key(ED)), HostKeyStatus::Known);
        assert_eq!(check_text(&text, f, "10.0.0.1", &key(ED)), HostKeyStatus::Known);
        assert_eq!(check_text(&text, f, &host_pattern("127.0.0.1", 2222), &key(ED)), HostKeyStatus::Known);
        assert_eq!(check_text(&text, f, &host_pattern("h.example", 2200), &key(ED)), HostKeyStatus::Known);
        assert_eq!(check_text(&text, f, "127.0.0.1", &key(ED)), HostKeyStatus::Unknown);
        assert_eq!(check_text(&text, f, "rift", &key(ED2)), HostKeyStatus::Changed { file: f.into(), line: 3 });
        assert_eq!(check_text(&text, f, &host_pattern("h.example", 2200), &key(ED2)), HostKeyStatus::Changed { file: f.into(), line: 5 });
    }

    #[test]
    fn markers_wildcards_and_garbage() {
        let f = Path::new("kh");
        let text = format!("garbage line\n@cert-authority *.example ssh-ed25519 {ED2}\n*.lan,!bad.lan ssh-ed25519 {ED}\n@revoked old.lan ssh-ed25519 {ED2}\nold.lan ssh-ed25519 {ED}\n");
        assert_eq!(check_text(&text, f, "a.lan", &key(ED)), HostKeyStatus::Known);
        assert_eq!(check_text(&text, f, "bad.lan", &key(ED)), HostKeyStatus::Unknown);
        assert_eq!(check_text(&text, f, "x.example", &key(ED2)), HostKeyStatus::Unknown);
        assert_eq!(check_text(&text, f, "old.lan", &key(ED2)), HostKeyStatus::Revoked { file: f.into(), line: 4 });
    }

    #[test]
    fn record_then_known_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let kh = KnownHosts { files: vec![dir.path().join("none"), dir.path().join("mcp/known_hosts")], own: dir.path().join("mcp/known_hosts") };
        assert!(matches!(kh.check("127.0.0.1", 2222, &key(ED)), HostKeyStatus::Unknown));
        kh.record("127.0.0.1", 2222, &key(ED)).unwrap();
        assert_eq!(kh.check("127.0.0.1", 2222, &key(ED)), HostKeyStatus::Known);
        assert!(matches!(kh.check("127.0.0.1", 2222, &key(ED2)), HostKeyStatus::Changed { line: 1, .. }));
        assert!(matches!(kh.check("127.0.0.1", 22, &key(ED)), HostKeyStatus::Unknown));
        assert_eq!(std::fs::metadata(&kh.own).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(fingerprint(&key(ED)).starts_with("SHA256:"));
    }

    #[test]
    fn a_node_has_one_key_whichever_address_answers() {
        let dir = tempfile::tempdir().unwrap();
        let kh = KnownHosts { files: vec![dir.path().join("kh")], own: dir.path().join("kh") };
        let addrs: Vec<(String, u16)> = vec![("100.95.0.1".into(), 9444), ("192.168.1.5".into(), 22), ("rift.lan".into(), 22)];
        assert_eq!(kh.check_node(&addrs, 1, &key(ED)), HostKeyStatus::Unknown);
        kh.record("100.95.0.1", 9444, &key(ED)).unwrap();
        // Recorded for the first address: the same key at another is known, another key refused.
        assert_eq!(kh.check_node(&addrs, 1, &key(ED)), HostKeyStatus::Known);
        assert!(matches!(kh.check_node(&addrs, 2, &key(ED2)), HostKeyStatus::Changed { line: 1, .. }));
        // An address's own record decides for it.
        kh.record("rift.lan", 22, &key(ED2)).unwrap();
        assert_eq!(kh.check_node(&addrs, 2, &key(ED2)), HostKeyStatus::Known);
        // Two keys recorded for one node: an address without a record of its own is refused.
        assert!(matches!(kh.check_node(&addrs, 1, &key(ED)), HostKeyStatus::Changed { .. }));
    }
}
