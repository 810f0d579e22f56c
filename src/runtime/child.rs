//! Helper processes the agent starts and waits for (an event follower, a KVM boot test, an
//! alert hook): tied to the agent's life, waited for with a deadline.

use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Make the child `cmd` starts get `signal` when the thread that started it (the agent) dies,
/// so helper processes never outlive it.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe and only changes the child's own settings.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
}

/// A child the agent waits for with a deadline: it dies with the agent, and leads a process
/// group of its own, which [`wait_at_most`] kills whole at the deadline.
pub fn tie_to_agent(cmd: &mut Command) {
    die_with_parent(cmd, libc::SIGKILL);
    std::os::unix::process::CommandExt::process_group(cmd, 0);
}

/// Wait for `child` to exit, at most `limit`; past it the child is killed (with its process
/// group when it leads one: rootless podman re-executes itself in a child that a SIGKILL of
/// the first process would leave running) and `None` is returned.
pub fn wait_at_most(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    // The exit is an event on a pidfd (no polling delay: a podman call is done the moment it
    // exits); where the kernel has no pidfd, a look every POLL.
    let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            kill(child);
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => exit_within(fd, left)?,
            None => std::thread::sleep(POLL.min(left)),
        }
    }
}

/// Wait at most `within` for the process of `pidfd` to exit (returns early when a signal
/// interrupts the wait: callers look again).
pub fn exit_within(pidfd: &std::os::fd::OwnedFd, within: Duration) -> std::io::Result<()> {
    let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec { tv_sec: within.as_secs() as i64, tv_nsec: within.subsec_nanos() as i64 };
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How long a killed child may take to be reaped (one stuck in uninterruptible I/O cannot
/// die until the I/O returns): past it a thread of its own waits for it.
const REAP_GRACE: Duration = Duration::from_secs(2);

fn kill(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: getpgid and killpg have no memory-safety preconditions.
    unsafe {
        if libc::getpgid(pid) == pid {
            libc::killpg(pid, libc::SIGKILL);
        } else {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let until = Instant::now() + REAP_GRACE;
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(POLL);
    }
    std::thread::spawn(move || {
        // SAFETY: waitpid on our own child with a null status pointer.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    });
}

/// What a bounded run of a command gave: its exit status (None: killed at the limit), its
/// stdout and the tail of its stderr.
#[derive(Debug)]
pub struct Bounded {
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The most stdout a bounded run keeps (a listing of thousands of containers fits).
const MAX_STDOUT: u64 = 256 << 20;

/// Run `cmd` to its end, at most `limit`: past it the child and its process group are
/// killed. The child dies with the thread that waits for it (so with the agent). stdout is
/// kept whole up to [`MAX_STDOUT`], stderr's last 64 KiB.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Bounded> {
    output_with_input(cmd, limit, None)
}

/// [`output_within`], with `input` written to the child's stdin (e.g. a password: never argv).
pub fn output_with_input(cmd: &mut Command, limit: Duration, input: Option<Vec<u8>>) -> std::io::Result<Bounded> {
    use std::process::Stdio;
    tie_to_agent(cmd);
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // On a thread: a child that does not read must not block us past the limit.
        std::thread::spawn(move || {
            use std::io::Write;
            // A write error means the child stopped reading: its exit says why.
            let _ = stdin.write_all(&input);
        });
    }
    let out = read_head(child.stdout.take().expect("piped"), MAX_STDOUT);
    let stderr = child.stderr.take().expect("piped");
    let (tx_err, err) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx_err.send(read_tail(stderr, 64 << 10));
    });
    let status = wait_at_most(&mut child, limit)?;
    // A grandchild may still hold the pipes open: what came so far, not a wait for its end.
    let grace = Instant::now() + PIPE_GRACE;
    let stdout = out.recv_timeout(PIPE_GRACE).unwrap_or_default();
    let stderr = err.recv_timeout(grace.saturating_duration_since(Instant::now())).unwrap_or_default();
    Ok(Bounded { status, stdout, stderr })
}

/// The first `max` bytes `from` gives, sent once it ends (or `max` is reached), read on a thread
/// of its own; whatever comes past them is read and dropped, so the child never blocks on a
/// full pipe.
pub fn read_head(from: impl Read + Send + 'static, max: u64) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, head) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut limited = from.take(max);
        let _ = limited.read_to_end(&mut all);
        let _ = tx.send(all);
        let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
    });
    head
}

/// How long a finished child's pipes may stay open (held by a process it left behind).
pub const PIPE_GRACE: Duration = Duration::from_secs(2);

/// What an exited child wrote to its piped stderr (empty if it was not piped).
pub fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}

/// Read `from` to its end on a thread of its own (so the child never blocks on a full pipe),
/// keeping only the last `keep` bytes.
pub fn drain_tail(from: impl Read + Send + 'static, keep: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || read_tail(from, keep))
}

/// `from` read to its end, of which the last `keep` bytes.
fn read_tail(mut from: impl Read, keep: usize) -> Vec<u8> {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * keep {
                    kept.drain(..kept.len() - keep);
                }
            }
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn waits_for_an_exit_and_kills_past_the_limit() {
        let mut quick = Command::new("sh").args(["-c", "echo oops >&2; exit 3"]).stderr(Stdio::piped()).spawn().unwrap();
        let status = wait_at_most(&mut quick, Duration::from_secs(30)).unwrap().expect("exited");
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr_of(&mut quick), "oops\n");
        let mut slow = Command::new("sleep").arg("30").spawn().unwrap();
        assert_eq!(wait_at_most(&mut slow, Duration::from_millis(100)).unwrap(), None);
        assert!(slow.try_wait().unwrap().is_some(), "killed and reaped");
    }

    #[test]
    fn a_bounded_run_gives_up_at_its_limit_and_keeps_output() {
        let done = output_within(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 4"]), Duration::from_secs(30)).unwrap();
        assert_eq!((done.status.and_then(|s| s.code()), done.stdout.as_slice(), done.stderr.as_slice()), (Some(4), &b"out\n"[..], &b"err\n"[..]));
        let hung = output_within(Command::new("sh").args(["-c", "echo started; exec sleep 600"]), Duration::from_millis(300)).unwrap();
        assert!(hung.status.is_none(), "killed at the limit");
        assert_eq!(hung.stdout, b"started\n");
    }

    #[test]
    fn drains_a_pipe_keeping_its_tail() {
        let mut loud = Command::new("sh").args(["-c", "head -c 300000 /dev/zero | tr '\\0' x; echo END"]).stdout(Stdio::piped()).spawn().unwrap();
        let tail = drain_tail(loud.stdout.take().unwrap(), 100);
        assert!(wait_at_most(&mut loud, Duration::from_secs(30)).unwrap().is_some(), "never blocked on a full pipe");
        let kept = tail.join().unwrap();
        assert_eq!(kept.len(), 100);
        assert!(kept.ends_with(b"xxEND\n"));
    }
}
