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

/// Wait for `child` to exit, at most `limit`; past it the child is killed and reaped and
/// `None` is returned.
pub fn wait_at_most(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

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
pub fn drain_tail(mut from: impl Read + Send + 'static, keep: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
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
    })
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
    fn drains_a_pipe_keeping_its_tail() {
        let mut loud = Command::new("sh").args(["-c", "head -c 300000 /dev/zero | tr '\\0' x; echo END"]).stdout(Stdio::piped()).spawn().unwrap();
        let tail = drain_tail(loud.stdout.take().unwrap(), 100);
        assert!(wait_at_most(&mut loud, Duration::from_secs(30)).unwrap().is_some(), "never blocked on a full pipe");
        let kept = tail.join().unwrap();
        assert_eq!(kept.len(), 100);
        assert!(kept.ends_with(b"xxEND\n"));
    }
}
