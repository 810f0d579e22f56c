//! The real Nanos toolchain and guest programs for the Nanos tests, built at test time and
//! cached in the build dir: the toolchain from the pinned source with shared/nanos/build
//! (`target/nanos`), the guest programs from tests/guest (a static build with TLS, a dynamic
//! one without).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Programs {
    /// Static (crt-static), with the `tls` feature: serve, serve-tls, probe.
    pub static_tls: PathBuf,
    /// Dynamically linked against the node's glibc: serve, probe.
    pub dynamic: PathBuf,
}

static TOOLCHAIN: OnceLock<PathBuf> = OnceLock::new();
static PROGRAMS: OnceLock<Programs> = OnceLock::new();

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf()
}

/// Where the pinned Nanos source and its build script are: $MCP_NANOS_SOURCE, or the shared
/// dir beside this checkout.
fn build_script() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("MCP_NANOS_SOURCE")
        .map(|p| PathBuf::from(p).join("build"))
        .into_iter()
        .chain([
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/nanos/build"),
            PathBuf::from("/work/shared/nanos/build"),
        ])
        .collect();
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!(
            "the Nanos source and its build script were not found at any of {candidates:?}; \
             set MCP_NANOS_SOURCE to the dir holding nanos-src.tar.xz and build"
        )
    })
}

/// A directory with kernel.img, boot.img and mkfs built from the pinned Nanos source (about a
/// minute the first time; the build script does nothing when its stamp matches).
pub fn toolchain() -> &'static Path {
    TOOLCHAIN.get_or_init(|| {
        let out = target_dir().join("nanos");
        let run = Command::new("bash").arg(build_script()).arg(&out).output().expect("bash runs");
        assert!(
            run.status.success(),
            "building the Nanos toolchain failed: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        for f in ["kernel.img", "boot.img", "mkfs"] {
            assert!(out.join(f).exists(), "{f} missing in {}", out.display());
        }
        out
    })
}

fn cargo_build(target_dir: &Path, static_tls: bool) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/Cargo.toml");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--locked", "--quiet", "--manifest-path"]).arg(&manifest).arg("--target-dir").arg(target_dir);
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS").env_remove("CARGO_TARGET_DIR").env_remove("CARGO_BUILD_TARGET");
    if static_tls {
        cmd.args(["--features", "tls", "--target", "x86_64-unknown-linux-gnu"]);
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    } else {
        cmd.env_remove("RUSTFLAGS");
    }
    let out = cmd.output().expect("cargo runs");
    assert!(out.status.success(), "building the guest program failed: {}", String::from_utf8_lossy(&out.stderr));
    let bin = if static_tls { target_dir.join("x86_64-unknown-linux-gnu/release/mcp-guest") } else { target_dir.join("release/mcp-guest") };
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// The guest programs (built on first use).
pub fn programs() -> &'static Programs {
    PROGRAMS.get_or_init(|| Programs {
        static_tls: cargo_build(&target_dir().join("guest-static"), true),
        dynamic: cargo_build(&target_dir().join("guest-dynamic"), false),
    })
}

/// `agent.toml` in `state` pointing `[nanos] dir` at the toolchain (plus `extra` lines).
pub fn agent_toml(state: &Path, extra: &str) {
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join("agent.toml"), format!("[nanos]\ndir = \"{}\"\n{extra}", toolchain().display())).unwrap();
}

/// A service `name` with one program-form component `app` running `program` with `fields`.
pub fn program_service(name: &str, program: &Path, fields: &str) -> String {
    format!(
        "name = \"{name}\"\nnode = \"local\"\n\n[[components]]\nname = \"app\"\nkind = \"unikernel\"\nprogram = \"{}\"\nstop_timeout = 5\n{fields}",
        program.display()
    )
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`:
/// (ca.crt, cert.pem, key.pem).
pub fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let sh = |script: &str| {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("sh runs");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=mcp-test-ca");
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out server.csr -subj /CN=127.0.0.1");
    sh("printf 'subjectAltName=IP:127.0.0.1\\n' > ext && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext");
    (dir.join("ca.crt"), dir.join("cert.pem"), dir.join("key.pem"))
}

/// GET https://127.0.0.1:port/ verified against `ca` (curl), until it answers or the deadline.
pub fn https_get(port: u16, ca: &Path, deadline: std::time::Duration) -> Option<String> {
    super::wait_for(deadline, || {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "3", "--cacert"])
            .arg(ca)
            .arg(format!("https://127.0.0.1:{port}/"))
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
}
