//! Input from outside never makes a reader grow without bound (#13, unbounded input): a huge
//! line sent to the daemon before hello, a huge line from a node to the client, a huge
//! container log line. Real binaries, real podman; memory read from /proc and getrusage.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Resident set of `pid` in MiB (VmRSS).
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb / 1024
}

#[test]
fn a_huge_line_before_hello_is_refused_and_the_daemon_stays_small() {
    let env = Env::new();
    let daemon = env.start_daemon(&[]);
    let socket = env.state.join("agent.sock");
    assert!(wait_for(Duration::from_secs(10), || UnixStream::connect(&socket).ok()).is_some());
    let before = rss_mib(daemon.pid());
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..300 {
        s.write_all(&chunk).unwrap();
    }
    s.write_all(b"\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    assert!(answer.contains("longer than the") && answer.contains("314572800 bytes"), "{answer}");
    let after = rss_mib(daemon.pid());
    eprintln!("daemon RSS before {before} MiB, after a 300 MiB line {after} MiB");
    assert!(after < before + 32, "the daemon grew from {before} to {after} MiB on one line");
    // The session goes on.
    s.write_all(b"{\"id\":1,\"method\":\"hello\",\"params\":{\"protocol\":1,\"client\":\"test\"}}\n").unwrap();
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    assert!(answer.contains("\"result\"") && answer.contains("\"daemon\":true"), "{answer}");
}

#[test]
fn a_node_that_sends_a_huge_line_is_an_error_not_a_huge_client() {
    let env = Env::new();
    // An "agent" that greets with 400 MB and no newline until the end.
    let fake = env.dir.path().join("fake-agent");
    std::fs::write(&fake, "#!/bin/sh\nhead -c 400000000 /dev/zero | tr '\\0' x\necho\nsleep 5\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.write_config(&fake.display().to_string());
    // Reaped below with wait4, which also gives its peak memory.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(MCP)
        .arg("--config")
        .arg(&env.config)
        .arg("list")
        .env("HOME", &env.home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.unwrap(), &mut stderr).unwrap();
    assert_ne!(status, 0, "{stderr}");
    assert!(stderr.contains("more than the") && stderr.contains("400000001 bytes") || stderr.contains("a line of 4000000"), "{stderr}");
    let max_mib = usage.ru_maxrss as u64 / 1024;
    eprintln!("mcp max RSS reading a 400 MB line: {max_mib} MiB");
    assert!(max_mib < 64, "mcp grew to {max_mib} MiB reading one line");
}

#[test]
fn a_huge_container_log_line_is_cut_and_says_so() {
    let env = Env::new();
    let svc = env.svc("loud");
    env.define(
        &svc,
        &format!(
            "name = \"{svc}\"\nnode = \"local\"\n\n[[components]]\nname = \"app\"\nimage = \"{IMAGE}\"\n\
             cmd = [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox head -c 20000000 /dev/zero | /bin/busybox tr '\\\\0' x; echo; echo after; exec /bin/busybox sleep 3600\"]\nstop_timeout = 1\n"
        ),
    );
    env.ok(&["deploy", &svc]);
    let logs = wait_for(Duration::from_secs(60), || {
        let l = env.ok(&["logs", &svc]).stdout;
        l.contains("after").then_some(l)
    })
    .expect("the container's output");
    let first = logs.lines().find(|l| l.contains("xxxx")).expect("the long line");
    assert!(first.len() < 70 * 1024, "a {}-byte line was passed on", first.len());
    assert!(first.ends_with(&format!("[mcp: line cut, {} more bytes]", 20_000_000 - 64 * 1024)), "{}", &first[first.len() - 60..]);
}
