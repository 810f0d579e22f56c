//! Which QEMU accelerator a new VM gets. `kvm` only where it has been seen to work: a
//! `/dev/kvm` that opens is not enough (on some hosts KVM runs firmware and then hangs every
//! Linux boot), so `auto` (the default) boots a Linux kernel under KVM once, with a deadline,
//! and keeps the verdict in the state dir. Anything short of that proof is `tcg`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::child::{die_with_parent, stderr_of, wait_at_most};
use super::qemu::QemuConfig;

pub const DEFAULT_PROBE_SECS: u64 = 15;
/// Where, in the state dir, `auto` keeps its verdict.
pub const VERDICT_FILE: &str = "accel.json";
/// What a booting Linux prints first on its console.
const BOOTED_MARK: &str = "Linux version";

/// The accelerator chosen, and why (logged, and kept with the verdict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub accel: String,
    pub why: String,
}

impl Choice {
    fn new(accel: &str, why: impl Into<String>) -> Self {
        Choice { accel: accel.into(), why: why.into() }
    }
}

/// How a boot test under KVM went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Booted { ms: u64 },
    Failed(String),
    /// Not run again: the verdict of an earlier test of the same qemu, kernel and host.
    Kept(Choice),
}

/// Decide from the setting and what was found; `probe` boots `kernel` under KVM and runs only
/// when nothing else settles it.
pub fn decide(setting: Option<&str>, kvm: Result<(), String>, kernel: Option<&Path>, probe: impl FnOnce(&Path) -> Probe) -> Choice {
    match setting {
        Some(s) if s != "auto" => return Choice::new(s, "set in agent.toml ([qemu] accel)"),
        _ => {}
    }
    if let Err(why) = kvm {
        return Choice::new("tcg", format!("no usable /dev/kvm ({why})"));
    }
    let Some(kernel) = kernel else {
        return Choice::new(
            "tcg",
            "KVM not proven: no Linux kernel to boot-test it with (set [qemu] probe_kernel, or accel = \"kvm\" to skip the test)",
        );
    };
    match probe(kernel) {
        Probe::Booted { ms } => Choice::new("kvm", format!("KVM booted {} in {ms} ms", kernel.display())),
        Probe::Failed(why) => Choice::new("tcg", format!("KVM did not work: {why}")),
        Probe::Kept(choice) => choice,
    }
}

/// The boot test: the kernel alone (no disk, no initrd, no network) panics for want of a root
/// filesystem right after it starts, `panic=-1` reboots at once and `-no-reboot` makes that
/// an exit. Its console goes to `log`.
pub fn probe_argv(accel: &str, kernel: &Path, log: &Path) -> Vec<String> {
    [
        "-accel", accel, "-m", "128M", "-nodefaults", "-display", "none", "-no-reboot", "-serial",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("file:{}", log.display()),
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1 loglevel=6".into(),
    ])
    .collect()
}

/// Boot `kernel` under `accel` and wait up to `deadline` for it to come back out; booted only
/// if qemu exited cleanly and the kernel printed its banner. The child is killed on timeout.
pub fn run_probe(program: &Path, accel: &str, kernel: &Path, scratch: &Path, deadline: Duration) -> Probe {
    let log = scratch.join(format!("accel-probe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(program);
    cmd.args(probe_argv(accel, kernel, &log)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    die_with_parent(&mut cmd, libc::SIGKILL);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Probe::Failed(format!("cannot start {}: {e}", program.display())),
    };
    let status = match wait_at_most(&mut child, deadline) {
        Ok(status) => status,
        Err(e) => return Probe::Failed(format!("waiting for qemu: {e}")),
    };
    let ms = started.elapsed().as_millis() as u64;
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let Some(status) = status else {
        let seen = if console.contains(BOOTED_MARK) { "the kernel started but did not finish" } else { "the kernel never printed its banner" };
        return Probe::Failed(format!("{} did not boot within {}s under -accel {accel} ({seen})", kernel.display(), deadline.as_secs()));
    };
    let stderr = stderr_of(&mut child);
    match (status.success(), console.contains(BOOTED_MARK)) {
        (true, true) => Probe::Booted { ms },
        (true, false) => Probe::Failed(format!("{} printed no \"{BOOTED_MARK}\" on its console", kernel.display())),
        (false, _) => Probe::Failed(format!("qemu -accel {accel} failed ({status}): {}", last_line(&stderr))),
    }
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim()
}

/// Can this process use KVM at all (`/dev/kvm` opens read-write and answers its API version)?
pub fn kvm_usable() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map_err(|e| e.to_string())?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: a KVM ioctl on a file this function owns; its argument must be 0.
    let version = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION as _, 0 as libc::c_ulong) };
    match version {
        12 => Ok(()),
        -1 => Err(format!("KVM_GET_API_VERSION: {}", std::io::Error::last_os_error())),
        v => Err(format!("KVM API version {v}, expected 12")),
    }
}

/// The kernel to boot-test with: the configured one, else the host's own where it can be
/// found (NixOS, then the usual /boot names).
pub fn probe_kernel(config: &QemuConfig) -> Option<PathBuf> {
    if let Some(k) = &config.probe_kernel {
        return Some(k.clone());
    }
    ["/run/booted-system/kernel".to_string(), format!("/boot/vmlinuz-{}", host_release()), "/boot/vmlinuz".to_string()]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| std::fs::File::open(p).is_ok())
}

/// What a kept verdict was reached for: the same qemu, kernel and host give the same answer.
fn verdict_key(program: &Path, kernel: &Path) -> String {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
                format!("{} ({} bytes, modified {mtime})", p.display(), m.len())
            })
            .unwrap_or_else(|_| p.display().to_string())
    };
    format!("{}|{}|{}", stamp(program), stamp(kernel), host_release())
}

/// The running host kernel's release (`uname -r`).
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

#[derive(Serialize, Deserialize)]
struct Verdict {
    key: String,
    #[serde(flatten)]
    choice: Choice,
}

/// The verdict `auto` keeps in a state dir, if it reached one.
pub fn kept_verdict(state_dir: &Path) -> Option<Choice> {
    let v: Verdict = serde_json::from_slice(&std::fs::read(state_dir.join(VERDICT_FILE)).ok()?).ok()?;
    Some(v.choice)
}

/// Choose for a new VM: the setting, else a kept verdict, else a boot test (kept in `cache`).
pub fn choose(config: &QemuConfig, program: &Path, cache: &Path) -> Choice {
    let scratch = cache.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
    let kernel = probe_kernel(config);
    let deadline = Duration::from_secs(config.probe_secs.unwrap_or(DEFAULT_PROBE_SECS).max(1));
    decide(config.accel.as_deref(), kvm_usable(), kernel.as_deref(), |kernel| {
        let key = verdict_key(program, kernel);
        let kept: Option<Verdict> = std::fs::read(cache).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(v) = kept.filter(|v| v.key == key) {
            return Probe::Kept(v.choice);
        }
        let probe = run_probe(program, "kvm", kernel, &scratch, deadline);
        let choice = decide(None, Ok(()), Some(kernel), |_| probe);
        tracing::info!(accel = %choice.accel, why = %choice.why, "accelerator tested for VMs");
        let verdict = Verdict { key, choice };
        let tmp = cache.with_extension("tmp");
        let written = std::fs::write(&tmp, serde_json::to_vec_pretty(&verdict).expect("verdicts serialize"))
            .and_then(|()| std::fs::rename(&tmp, cache));
        if let Err(e) = written {
            tracing::warn!(file = %cache.display(), error = %e, "cannot keep the KVM verdict; it will be tested again");
        }
        Probe::Kept(verdict.choice)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &Path) -> Probe {
        panic!("must not boot-test")
    }

    #[test]
    fn a_setting_wins_and_auto_needs_proof() {
        let k = Path::new("/boot/vmlinuz");
        assert_eq!(decide(Some("tcg"), Ok(()), Some(k), never).accel, "tcg");
        assert_eq!(decide(Some("kvm"), Err("absent".into()), None, never).accel, "kvm");
        let c = decide(None, Err("No such file or directory (os error 2)".into()), Some(k), never);
        assert_eq!((c.accel.as_str(), c.why.as_str()), ("tcg", "no usable /dev/kvm (No such file or directory (os error 2))"));
        let c = decide(Some("auto"), Ok(()), None, never);
        assert_eq!(c.accel, "tcg");
        assert!(c.why.contains("probe_kernel"), "{}", c.why);
        let c = decide(None, Ok(()), Some(k), |_| Probe::Booted { ms: 812 });
        assert_eq!((c.accel.as_str(), c.why.as_str()), ("kvm", "KVM booted /boot/vmlinuz in 812 ms"));
        let c = decide(None, Ok(()), Some(k), |_| Probe::Failed("hung".into()));
        assert_eq!((c.accel.as_str(), c.why.as_str()), ("tcg", "KVM did not work: hung"));
        assert_eq!(decide(None, Ok(()), Some(k), |_| Probe::Kept(c.clone())), c);
    }

    #[test]
    fn probe_command_line() {
        assert_eq!(
            probe_argv("kvm", Path::new("/k"), Path::new("/s/p.log")),
            vec![
                "-accel", "kvm", "-m", "128M", "-nodefaults", "-display", "none", "-no-reboot", "-serial", "file:/s/p.log",
                "-kernel", "/k", "-append", "console=ttyS0 panic=-1 loglevel=6",
            ]
        );
    }
}
