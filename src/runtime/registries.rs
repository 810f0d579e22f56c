//! Images from registries: which registry an image comes from, pulls with progress and a cause
//! an operator can act on, and credentials and trust on the node. The agent's podman calls all
//! read one auth file (`REGISTRY_AUTH_FILE`, 0600 in the state dir, kept across reboots,
//! unlike podman's default under $XDG_RUNTIME_DIR); a registry's CA goes to podman's
//! per-registry certs dir (`/etc/containers/certs.d/<registry>/ca.crt` for root,
//! `~/.config/containers/certs.d/...` rootless), where every podman on the node finds it.
//! Argv builders and classification are pure; the password only ever travels on stdin.

use std::path::{Path, PathBuf};

/// The registry part of an image reference (`reg.example:8443/app:v1` -> `reg.example:8443`);
/// None for short names (resolved by podman's registries.conf, e.g. docker.io).
pub fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// An image that lives only on this node (`localhost/...`): no registry has it.
pub fn is_local(image: &str) -> bool {
    registry_of(image) == Some("localhost")
}

/// A registry name as podman takes it and a file name can hold: `host` or `host:port`.
pub fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !host.starts_with(['.', '-'])
        && !host.contains("..");
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("{registry:?} is not a registry; expected host or host:port, e.g. registry.example.net:8443"))
    }
}

/// A user name podman can take as one argument.
pub fn check_username(username: &str) -> Result<(), String> {
    if username.is_empty() || username.len() > 256 || username.chars().any(|c| c.is_control() || c == ':') {
        return Err("the user name must be 1-256 characters, without ':' or control characters".into());
    }
    Ok(())
}

/// `podman login` reading the password from stdin (the `=` form: a name starting with '-'
/// stays a value).
pub fn login_argv(registry: &str, username: &str) -> Vec<String> {
    vec!["login".into(), format!("--username={username}"), "--password-stdin".into(), registry.into()]
}

pub fn logout_argv(registry: &str) -> Vec<String> {
    vec!["logout".into(), registry.into()]
}

pub fn pull_argv(image: &str) -> Vec<String> {
    vec!["pull".into(), image.into()]
}

/// `podman image inspect` printing the image's id, its digest and its repo digests (fails
/// when it is not here).
pub fn inspect_argv(image: &str) -> Vec<String> {
    vec!["image".into(), "inspect".into(), "--format".into(), "{{.Id}} {{.Digest}} {{range .RepoDigests}}{{.}} {{end}}".into(), image.into()]
}

/// The repository of a reference: the name without tag or digest.
pub fn repository_of(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

/// What [`inspect_argv`] prints, read for `image`: the image id, its own digest (the one it was
/// made or first pulled with) and the digests its repository knows it by. podman lists every
/// name with every digest the image has, so an image that was on the node before it was pulled
/// (built here, then pushed) shows two in the same repository: see [`choose_digest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inspected {
    pub id: Option<String>,
    pub own: Option<String>,
    pub in_repo: Vec<String>,
}

pub fn parse_inspect(out: &str, image: &str) -> Inspected {
    let mut words = out.split_whitespace();
    let id = words.next().filter(|w| is_hex_id(w)).map(str::to_string);
    let own = words.next().filter(|w| is_digest(w)).map(str::to_string);
    let repo = repository_of(image);
    let mut in_repo: Vec<String> = Vec::new();
    for (r, d) in words.filter_map(|w| w.split_once('@')) {
        if r == repo && is_digest(d) && !in_repo.iter().any(|x| x == d) {
            in_repo.push(d.to_string());
        }
    }
    Inspected { id, own, in_repo }
}

/// The digest the registry knows the image by: the only one its repository lists, else the
/// one the registry says the tag points at (when it is among them), else the first; the
/// image's own digest when the repository lists none.
pub fn choose_digest(seen: &Inspected, registry_says: impl FnOnce() -> Option<String>) -> Option<String> {
    match seen.in_repo.as_slice() {
        [] => seen.own.clone(),
        [one] => Some(one.clone()),
        several => registry_says().filter(|d| several.contains(d)).or_else(|| several.first().cloned()),
    }
}

/// An image id: 64 hex digits.
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `sha256:` and 64 hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Why a pull or login failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Unauthorized,
    UnknownCa,
    NoSuchImage,
    Unreachable,
    Other(String),
}

impl Cause {
    pub fn describe(&self, registry: &str) -> String {
        match self {
            Cause::Unauthorized => format!("unauthorized: the registry refused the credentials (or there are none); run `mcp registry login {registry}`"),
            Cause::UnknownCa => format!("the registry's TLS certificate is signed by an unknown CA; run `mcp registry login {registry} --ca-file CA.pem`"),
            Cause::NoSuchImage => "no such image or tag in the registry".into(),
            Cause::Unreachable => "the registry is unreachable (connection refused, timed out or no such host)".into(),
            Cause::Other(tail) => tail.clone(),
        }
    }
}

/// Read podman's stderr of a failed pull or login.
pub fn classify(stderr: &str) -> Cause {
    let s = stderr.to_ascii_lowercase();
    if s.contains("unauthorized") || s.contains("authentication required") || s.contains("invalid username/password") {
        Cause::Unauthorized
    } else if s.contains("x509") || s.contains("certificate signed by unknown authority") || s.contains("certificate is not trusted") {
        Cause::UnknownCa
    } else if s.contains("manifest unknown") || s.contains("name unknown") || s.contains(": not found") || s.contains("repository does not exist") {
        Cause::NoSuchImage
    } else if s.contains("connection refused") || s.contains("no such host") || s.contains("i/o timeout") || s.contains("network is unreachable") || s.contains("connection reset") {
        Cause::Unreachable
    } else {
        let lines: Vec<&str> = stderr.trim().lines().collect();
        Cause::Other(lines[lines.len().saturating_sub(2)..].join(" / "))
    }
}

/// podman's per-registry certs dir root for the user the agent runs as.
pub fn certs_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/etc/containers/certs.d");
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("containers/certs.d")
}

/// The file a registry's CA is kept in by `mcp registry login` (podman reads every `*.crt`
/// of the dir; an admin's own `ca.crt` is never touched).
pub const MCP_CA: &str = "mcp-ca.crt";

pub use crate::proto::RegistryEntry;

/// The registries an auth file holds credentials for (its `auths` keys; the values, which are
/// the secrets, are never read into the result).
pub fn logged_in(auth_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(auth_json).map_err(|e| format!("not JSON: {e}"))?;
    let mut names: Vec<String> = v.get("auths").and_then(|a| a.as_object()).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    names.sort();
    Ok(names)
}

/// A PEM CA bundle: certificates only, bounded.
pub fn check_ca(pem: &str) -> Result<(), String> {
    if pem.len() > 1 << 20 {
        return Err("the CA file is larger than 1 MiB".into());
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.contains("PRIVATE KEY-----") {
        return Err("the CA file must hold PEM certificates (-----BEGIN CERTIFICATE-----) and no private key".into());
    }
    Ok(())
}

/// `<root>/<registry>` after [`check_registry`] (no '/', no "..": one component).
pub fn certs_dir(root: &Path, registry: &str) -> PathBuf {
    root.join(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_of_references() {
        assert_eq!(registry_of("mcr.svc.mcp.metacircular.net:8443/myservice:v1.0.0"), Some("mcr.svc.mcp.metacircular.net:8443"));
        assert_eq!(registry_of("127.0.0.1:5000/a/b@sha256:00"), Some("127.0.0.1:5000"));
        assert_eq!(registry_of("localhost/mcp-test:latest"), Some("localhost"));
        assert_eq!(registry_of("library/busybox"), None);
        assert_eq!(registry_of("busybox"), None);
        assert!(is_local("localhost/mcp-test:latest") && !is_local("127.0.0.1:5000/a") && !is_local("busybox"));
    }

    #[test]
    fn registry_and_user_names() {
        for ok in ["reg.example.net", "127.0.0.1:5000", "localhost:8443"] {
            assert!(check_registry(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../etc", "a/b", "-x", "reg:0", "reg:99999", "reg:", "a b", ".hidden", "a..b"] {
            assert!(check_registry(bad).is_err(), "{bad}");
        }
        assert!(check_username("deploy").is_ok());
        assert!(check_username("a:b").is_err() && check_username("").is_err() && check_username("a\nb").is_err());
    }

    #[test]
    fn argv_exact() {
        assert_eq!(login_argv("r:1", "-u"), ["login", "--username=-u", "--password-stdin", "r:1"]);
        assert_eq!(logout_argv("r:1"), ["logout", "r:1"]);
        assert_eq!(pull_argv("r:1/a:v"), ["pull", "r:1/a:v"]);
        assert_eq!(inspect_argv("r:1/a:v")[3], "{{.Id}} {{.Digest}} {{range .RepoDigests}}{{.}} {{end}}");
        let (id, own, there) = ("ab".repeat(32), format!("sha256:{}", "cd".repeat(32)), format!("sha256:{}", "ef".repeat(32)));
        // Built here and pushed, then pulled: both digests under both names.
        let out = format!("{id} {own} r:1/a@{own} r:1/a@{there} localhost/x@{own} localhost/x@{there} \n");
        let seen = parse_inspect(&out, "r:1/a:v");
        assert_eq!(seen, Inspected { id: Some(id.clone()), own: Some(own.clone()), in_repo: vec![own.clone(), there.clone()] });
        assert_eq!(choose_digest(&seen, || Some(there.clone())), Some(there.clone()), "the registry says which");
        assert_eq!(choose_digest(&seen, || None), Some(own.clone()), "no answer: the first");
        let pulled = parse_inspect(&format!("{id} {there} r:1/a@{there} \n"), "r:1/a:v");
        assert_eq!(choose_digest(&pulled, || panic!("one candidate: no registry call")), Some(there.clone()));
        let local = parse_inspect(&format!("{id} {own} \n"), "r:2/b:v");
        assert_eq!(choose_digest(&local, || None), Some(own));
        assert_eq!(parse_inspect(&format!("{id} <none> \n"), "r:1/a").own, None);
        assert_eq!(repository_of("r:1/a/b:v1"), "r:1/a/b");
        assert_eq!(repository_of(&format!("r:1/a@{there}")), "r:1/a");
        assert_eq!(repository_of("r:1/a"), "r:1/a");
        assert!(is_digest(&format!("sha256:{}", "ab".repeat(32))) && !is_digest("sha256:ab") && !is_digest(""));
    }

    #[test]
    fn causes_from_podman_stderr() {
        let c = |s| classify(s);
        assert_eq!(c("Error: initializing source docker://127.0.0.1:5000/a:v: reading manifest v in 127.0.0.1:5000/a: unauthorized: authentication required"), Cause::Unauthorized);
        assert_eq!(c("Error: ... pinging container registry 127.0.0.1:5000: Get \"https://127.0.0.1:5000/v2/\": x509: certificate signed by unknown authority"), Cause::UnknownCa);
        assert_eq!(c("Error: ... reading manifest nope in 127.0.0.1:5000/a: manifest unknown: manifest unknown"), Cause::NoSuchImage);
        assert_eq!(c("Error: ... dial tcp 127.0.0.1:5000: connect: connection refused"), Cause::Unreachable);
        assert_eq!(c("Trying to pull x...\nError: something else\n"), Cause::Other("Trying to pull x... / Error: something else".into()));
        assert!(Cause::Unauthorized.describe("r:1").contains("mcp registry login r:1"));
    }

    #[test]
    fn auth_file_names_only() {
        let names = logged_in(r#"{"auths":{"r:2":{"auth":"c2VjcmV0"},"r:1":{"auth":"eA=="}}}"#).unwrap();
        assert_eq!(names, ["r:1", "r:2"]);
        assert!(logged_in("{}").unwrap().is_empty());
        assert!(check_ca("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n").is_ok());
        assert!(check_ca("-----BEGIN CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----").is_err());
        assert!(check_ca("hello").is_err());
    }
}
