//! Nanos images: the manifest (nanos' tuple syntax, as tools/mkfs.c and its
//! src/runtime/tuple_parser.c read it) and the toolchain's `mkfs` that turns it into a bootable
//! disk image. The manifest is rendered by a pure function from a [`Manifest`]; the file tree
//! in it names only files under the VM's staging tree, which the agent itself wrote.
//!
//! Quoting: a name ends at whitespace, `(`, `)`, `[`, `]`, `:`, `|` or `/`; a value at
//! whitespace or a bracket; `#` where a name or value starts begins a comment. Anything else
//! than a plain word is written as a quoted string (`"..."`, with `\` escaping `"` and `\`),
//! which both names and values accept.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tree::{self, Visit};
use crate::runtime::child;

/// `[nanos]` in agent.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NanosConfig {
    /// A directory with kernel.img, boot.img and mkfs (what nanos' `make kernel tools` builds,
    /// the flake's `nanos` package, or shared/nanos/build).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Seconds `mkfs` may take for one image (default 120).
    #[serde(default)]
    pub mkfs_secs: Option<u64>,
}

/// The files of a Nanos toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub boot: PathBuf,
    pub mkfs: PathBuf,
}

pub const HOW_TO_GET: &str = "build it from nanovms/nanos (`make kernel tools`: kernel.img, boot.img, mkfs) or use the \
     mcp flake's packages.<system>.nanos, then set [nanos] dir = \"/path/to/it\" in agent.toml";

impl NanosConfig {
    /// The configured toolchain, checked: each file there, mkfs executable.
    pub fn toolchain(&self) -> Result<Toolchain, String> {
        let Some(dir) = &self.dir else {
            return Err(format!("no Nanos toolchain is configured ([nanos] dir in agent.toml is not set); {HOW_TO_GET}"));
        };
        let t = Toolchain { dir: dir.clone(), kernel: dir.join("kernel.img"), boot: dir.join("boot.img"), mkfs: dir.join("mkfs") };
        let mut missing = Vec::new();
        for (name, p) in [("kernel.img", &t.kernel), ("boot.img", &t.boot), ("mkfs", &t.mkfs)] {
            match std::fs::metadata(p) {
                Ok(m) if m.is_file() => {
                    use std::os::unix::fs::PermissionsExt;
                    if name == "mkfs" && m.permissions().mode() & 0o111 == 0 {
                        missing.push("mkfs (not executable)".to_string());
                    }
                }
                _ => missing.push(name.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "the Nanos toolchain in {} ([nanos] dir) lacks {}; {HOW_TO_GET}",
                dir.display(),
                missing.join(", ")
            ));
        }
        Ok(t)
    }

    pub fn mkfs_timeout(&self) -> Duration {
        Duration::from_secs(self.mkfs_secs.unwrap_or(120))
    }
}

/// One entry of the guest's file tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(BTreeMap<String, Node>),
    /// Contents from this file on the node (under the staging tree).
    File(PathBuf),
    Link(String),
}

/// A static IPv4 configuration for the guest's first interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    pub address: std::net::Ipv4Addr,
    pub netmask: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
}

/// What a Nanos image holds and runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The root directory's entries.
    pub children: BTreeMap<String, Node>,
    /// The program's path in the guest.
    pub program: String,
    /// Its argv, argv[0] included.
    pub arguments: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub ip: Option<StaticIp>,
}

fn plain(s: &str, extra: &str) -> bool {
    !s.is_empty() && !s.starts_with('#') && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-+@%,=~".contains(c) || extra.contains(c))
}

/// A name (a tuple key) as the parser reads it back.
pub fn name(s: &str) -> String {
    if plain(s, "") {
        s.to_string()
    } else {
        quoted(s)
    }
}

/// A string value as the parser reads it back.
pub fn value(s: &str) -> String {
    if plain(s, "/:") {
        s.to_string()
    } else {
        quoted(s)
    }
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn render_children(out: &mut String, children: &BTreeMap<String, Node>, depth: usize) {
    let pad = "    ".repeat(depth);
    for (n, node) in children {
        match node {
            Node::File(host) => {
                out.push_str(&format!("{pad}{}:(contents:(host:{}))\n", name(n), value(&host.to_string_lossy())));
            }
            Node::Link(target) => out.push_str(&format!("{pad}{}:(linktarget:{})\n", name(n), value(target))),
            Node::Dir(sub) if sub.is_empty() => out.push_str(&format!("{pad}{}:(children:())\n", name(n))),
            Node::Dir(sub) => {
                out.push_str(&format!("{pad}{}:(children:(\n", name(n)));
                render_children(out, sub, depth + 1);
                out.push_str(&format!("{pad}))\n"));
            }
        }
    }
}

/// The manifest text mkfs reads on its stdin.
pub fn render(m: &Manifest) -> String {
    let mut out = String::from("(\n    children:(\n");
    render_children(&mut out, &m.children, 2);
    out.push_str("    )\n");
    out.push_str(&format!("    program:{}\n", value(&m.program)));
    let args: Vec<String> = m.arguments.iter().map(|a| value(a)).collect();
    out.push_str(&format!("    arguments:[{}]\n", args.join(" ")));
    let env: Vec<String> = m.environment.iter().map(|(k, v)| format!("{}:{}", name(k), value(v))).collect();
    out.push_str(&format!("    environment:({})\n", env.join(" ")));
    if let Some(ip) = &m.ip {
        out.push_str(&format!("    ipaddr:{}\n    netmask:{}\n    gateway:{}\n", ip.address, ip.netmask, ip.gateway));
    }
    out.push_str(")\n");
    out
}

/// The file tree under `staging` as manifest nodes naming the staged files.
pub fn tree_of(staging: &Path) -> io::Result<BTreeMap<String, Node>> {
    struct Builder {
        root: PathBuf,
        stack: Vec<BTreeMap<String, Node>>,
    }
    fn key(rel: &Path) -> io::Result<String> {
        let n = rel.file_name().unwrap_or(rel.as_os_str());
        n.to_str()
            .map(String::from)
            .ok_or_else(|| io::Error::other(format!("{} has a name that is not UTF-8, which a Nanos image cannot hold", rel.display())))
    }
    impl Visit for Builder {
        fn enter(&mut self, _: &Path, _: u32) -> io::Result<()> {
            self.stack.push(BTreeMap::new());
            Ok(())
        }
        fn leave(&mut self, rel: &Path) -> io::Result<()> {
            let done = self.stack.pop().expect("leave after enter");
            let k = key(rel)?;
            self.stack.last_mut().expect("the root stays").insert(k, Node::Dir(done));
            Ok(())
        }
        fn file(&mut self, rel: &Path, _: u32, _: u64, _: &mut dyn Read) -> io::Result<()> {
            let k = key(rel)?;
            // mkfs reads it again by this path: the staging tree is the agent's own.
            self.stack.last_mut().expect("the root stays").insert(k, Node::File(self.root.join(rel)));
            Ok(())
        }
        fn symlink(&mut self, rel: &Path, target: &[u8]) -> io::Result<()> {
            let k = key(rel)?;
            let target = std::str::from_utf8(target)
                .map_err(|_| io::Error::other(format!("{} links to a name that is not UTF-8", rel.display())))?;
            self.stack.last_mut().expect("the root stays").insert(k, Node::Link(target.to_string()));
            Ok(())
        }
    }
    let mut b = Builder { root: staging.to_path_buf(), stack: vec![BTreeMap::new()] };
    // Names only: file contents are not read here (mkfs reads them).
    tree::walk(tree::open_dir(staging)?.as_fd(), &mut b)?;
    Ok(b.stack.pop().expect("the root stays"))
}

/// Run the toolchain's mkfs on `manifest` (given on stdin, never written to disk: it holds the
/// environment) to make `out` (owner-only). mkfs prints the whole manifest on stdout, so that
/// is discarded; its stderr is returned on failure with the environment's values masked.
pub fn mkfs(t: &Toolchain, manifest: &str, out: &Path, secrets: &[&str], limit: Duration) -> Result<(), String> {
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut child = Command::new(&t.mkfs)
        .arg("-b")
        .arg(&t.boot)
        .arg("-k")
        .arg(&t.kernel)
        .arg(&tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", t.mkfs.display()))?;
    // mkfs prints the whole manifest (environment included) on stdout when it succeeds, and
    // its errors on stdout or stderr: both are drained, only their ends kept, and shown only
    // on failure, masked.
    let out_tail = child::drain_tail(child.stdout.take().expect("piped"), 2000);
    let err_tail = child::drain_tail(child.stderr.take().expect("piped"), 2000);
    let mut stdin = child.stdin.take().expect("piped");
    let wrote = stdin.write_all(manifest.as_bytes());
    drop(stdin);
    let status = child::wait_at_most(&mut child, limit).map_err(|e| format!("waiting for mkfs: {e}"))?;
    let said = |h: std::thread::JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap_or_default()).trim().to_string();
    let (out_text, err_text) = (said(out_tail), said(err_tail));
    let mask = |text: String| secrets.iter().filter(|s| s.len() >= 3).fold(text, |t, s| t.replace(s, "***"));
    let output = mask([out_text, err_text].into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join("; "));
    match status {
        None => return Err(format!("mkfs did not finish within {}s", limit.as_secs())),
        Some(s) if !s.success() => return Err(format!("mkfs failed ({s}): {output}")),
        Some(_) => {}
    }
    wrote.map_err(|e| format!("writing the manifest to mkfs: {e}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_quoted_only_when_needed() {
        assert_eq!(name("index.html"), "index.html");
        assert_eq!(name("a b"), "\"a b\"");
        assert_eq!(name("x:y"), "\"x:y\"");
        assert_eq!(name("(x)"), "\"(x)\"");
        assert_eq!(name("#x"), "\"#x\"");
        assert_eq!(name(""), "\"\"");
        assert_eq!(value("/srv/mcat/mcat.toml"), "/srv/mcat/mcat.toml");
        assert_eq!(value("127.0.0.1:8443"), "127.0.0.1:8443");
        assert_eq!(value("hello world"), "\"hello world\"");
        assert_eq!(value("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(value("[x]"), "\"[x]\"");
        assert_eq!(value("é"), "\"é\"");
    }

    #[test]
    fn manifest_exact() {
        let mut www = BTreeMap::new();
        www.insert("index.html".to_string(), Node::File("/st/srv/www/index.html".into()));
        www.insert("my file (1).txt".to_string(), Node::File("/st/srv/www/my file (1).txt".into()));
        www.insert("current".to_string(), Node::Link("index.html".into()));
        www.insert("empty".to_string(), Node::Dir(BTreeMap::new()));
        let mut srv = BTreeMap::new();
        srv.insert("www".to_string(), Node::Dir(www));
        let mut children = BTreeMap::new();
        children.insert("srv".to_string(), Node::Dir(srv));
        children.insert("app".to_string(), Node::File("/st/app".into()));
        let mut environment = BTreeMap::new();
        environment.insert("GREETING".to_string(), "hello world".to_string());
        environment.insert("URL".to_string(), "http://x:1/(a)".to_string());
        let m = Manifest {
            children,
            program: "/app".into(),
            arguments: vec!["app".into(), "--config".into(), "/srv/www/a b.toml".into()],
            environment,
            ip: Some(StaticIp { address: "10.213.0.2".parse().unwrap(), netmask: "255.255.0.0".parse().unwrap(), gateway: "10.213.0.1".parse().unwrap() }),
        };
        let expected = r#"(
    children:(
        app:(contents:(host:/st/app))
        srv:(children:(
            www:(children:(
                current:(linktarget:index.html)
                empty:(children:())
                index.html:(contents:(host:/st/srv/www/index.html))
                "my file (1).txt":(contents:(host:"/st/srv/www/my file (1).txt"))
            ))
        ))
    )
    program:/app
    arguments:[app --config "/srv/www/a b.toml"]
    environment:(GREETING:"hello world" URL:"http://x:1/(a)")
    ipaddr:10.213.0.2
    netmask:255.255.0.0
    gateway:10.213.0.1
)
"#;
        assert_eq!(render(&m), expected);
        let bare = Manifest { ip: None, environment: BTreeMap::new(), ..m };
        let text = render(&bare);
        assert!(text.contains("    environment:()\n") && !text.contains("ipaddr"), "{text}");
    }

    #[test]
    fn tree_of_names_staged_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("srv/www")).unwrap();
        std::fs::write(dir.path().join("srv/www/a"), "A").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("srv/www/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        let t = tree_of(dir.path()).unwrap();
        let mut www = BTreeMap::new();
        www.insert("a".to_string(), Node::File(dir.path().join("srv/www/a")));
        www.insert("b".to_string(), Node::Link("a".into()));
        let mut srv = BTreeMap::new();
        srv.insert("www".to_string(), Node::Dir(www));
        let mut want = BTreeMap::new();
        want.insert("empty".to_string(), Node::Dir(BTreeMap::new()));
        want.insert("srv".to_string(), Node::Dir(srv));
        assert_eq!(t, want);
    }

    #[test]
    fn toolchain_checks_say_what_is_missing() {
        let e = NanosConfig::default().toolchain().unwrap_err();
        assert!(e.contains("[nanos] dir") && e.contains("make kernel tools"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernel.img"), "k").unwrap();
        std::fs::write(dir.path().join("mkfs"), "#!/bin/sh\n").unwrap();
        let e = NanosConfig { dir: Some(dir.path().into()), ..Default::default() }.toolchain().unwrap_err();
        assert!(e.contains("lacks boot.img, mkfs (not executable)"), "{e}");
    }
}
