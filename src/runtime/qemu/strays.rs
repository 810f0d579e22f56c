//! A VM's qemu processes found by the id in their command line (`-name <name>,process=mcp-<id>`,
//! see [`super::argv`]): what a failed or hung start may have left daemonized, in a session of
//! its own that the kill of the first process does not reach.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// The most of a command line read: qemu's are a few KiB.
const MAX_CMDLINE: u64 = 64 << 10;

/// How long killed processes get to be gone (their tap and disk locks with them).
const GONE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `cmdline` (NUL-separated, as /proc gives it) starts VM `id`: an argument `-name`
/// followed by one ending in `,process=mcp-<id>`. Exact tokens: a `grep` or `pgrep` naming the
/// id is not a VM.
pub fn is_vm_cmdline(cmdline: &[u8], id: &str) -> bool {
    let marker = format!(",process=mcp-{id}");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w[0] == b"-name" && w[1].ends_with(marker.as_bytes()))
}

/// Process `pid`'s command line, at most [`MAX_CMDLINE`] bytes.
pub fn cmdline(pid: i32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?.take(MAX_CMDLINE).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Every process of this user that is VM `id`'s, by pid.
pub fn pids_of(id: &str) -> Vec<i32> {
    candidates().filter(|pid| cmdline(*pid).is_some_and(|c| is_vm_cmdline(&c, id))).collect()
}

/// The pids under /proc owned by this process's user (a VM's qemu runs as the agent).
fn candidates() -> impl Iterator<Item = i32> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(move |e| e.metadata().is_ok_and(|m| m.uid() == me))
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
}

/// Kill the processes of VM `id` but those in `spare` (what ran before the start: a VM that
/// was running is not the start's leftover), and wait a moment for them to be gone. Each is
/// signalled through a pidfd opened before its command line is read, so a pid that exits and
/// is reused meanwhile is never hit (where the kernel has no pidfd: a plain kill right after
/// the check). Returns how many were killed.
pub fn kill_new(id: &str, spare: &[i32]) -> usize {
    let mut killed = Vec::new();
    for pid in candidates().filter(|p| !spare.contains(p)) {
        let Some(raw) = Pid::from_raw(pid) else { continue };
        match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => {
                if cmdline(pid).is_some_and(|c| is_vm_cmdline(&c, id)) && pidfd_send_signal(&fd, Signal::KILL).is_ok() {
                    killed.push(fd);
                }
            }
            Err(rustix::io::Errno::NOSYS) => {
                if cmdline(pid).is_some_and(|c| is_vm_cmdline(&c, id)) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(_) => {}
        }
    }
    let end = std::time::Instant::now() + GONE_WITHIN;
    for fd in &killed {
        let _ = crate::runtime::child::exit_within(fd, end.saturating_duration_since(std::time::Instant::now()));
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_known_by_its_exact_name_argument() {
        let qemu = b"qemu-system-x86_64\0-name\0s-vm,process=mcp-vm-1a\0-m\x00256M\x00";
        assert!(is_vm_cmdline(qemu, "vm-1a"));
        assert!(!is_vm_cmdline(qemu, "vm-1"), "another id is not a prefix of this one");
        assert!(!is_vm_cmdline(b"grep\0process=mcp-vm-1a\0", "vm-1a"), "a command naming the id is not the VM");
        assert!(!is_vm_cmdline(b"sh\0-c\0x -name s,process=mcp-vm-1a\0", "vm-1a"), "only exact arguments");
        assert!(!is_vm_cmdline(b"", "vm-1a"));
    }

    #[test]
    fn kills_what_a_start_left_but_spares_what_ran_before() {
        let id = format!("vm-strays-test-{}", std::process::id());
        let mut p = std::process::Command::new("perl")
            .args(["-e", "sleep 600", "--", "-name", &format!("s-vm,process=mcp-{id}")])
            .spawn()
            .expect("perl runs");
        let pid = p.id() as i32;
        // The command line is there a moment after spawn returns (exec sets it up last).
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pids_of(&id).is_empty() && std::time::Instant::now() < end {
            std::thread::yield_now();
        }
        assert_eq!(pids_of(&id), [pid]);
        assert_eq!(kill_new(&id, &[pid]), 0, "it ran before the start: spared");
        assert!(p.try_wait().unwrap().is_none());
        assert_eq!(kill_new(&id, &[]), 1);
        assert!(p.wait().unwrap().code().is_none(), "killed");
        assert!(pids_of(&id).is_empty());
    }
}
