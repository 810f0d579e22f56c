//! A hostile container against the root agent's file transfers: the container has its
//! service's volume mounted and runs a busybox loop that swaps what the agent is about to use
//! (temp files for symlinks, directories for symlinks), makes FIFOs and setuid files. Real
//! binaries, real podman; the only thing the tests count is what changed outside the volume.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A service whose one container mounts `vol` at /data and runs `script` (busybox sh).
fn hostile_service(name: &str, vol: &Path, script: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "name = \"{name}\"\nnode = \"local\"\n\n[[components]]\nname = \"evil\"\nimage = \"{IMAGE}\"\n\
         volumes = [\"{}:/data\"]\ncmd = [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\nstop_timeout = 1\n",
        vol.display()
    )
}

/// A root-owned, owner-only file outside every volume.
fn victim(dir: &Path) -> std::path::PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, "root's secret\n").unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o600)).unwrap();
    v
}

fn assert_untouched(v: &Path) {
    assert_eq!(std::fs::read_to_string(v).unwrap(), "root's secret\n", "{} was written", v.display());
    assert_eq!(std::fs::metadata(v).unwrap().permissions().mode() & 0o7777, 0o600, "{} was chmodded", v.display());
}

/// #13.1: the container swaps every push temp file for a symlink to a host file; the agent
/// must never chmod or write through it.
#[test]
fn push_temp_file_swapped_for_a_symlink_never_touches_the_host_file() {
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let v = victim(env.dir.path());
    let svc = env.svc("swaptmp");
    let script = format!(
        "while true; do for f in /data/.mcp-push-*; do [ -e \"$f\" ] && [ ! -L \"$f\" ] && \
         /bin/busybox rm -f \"$f\" && /bin/busybox ln -s {} \"$f\"; done; done",
        v.display()
    );
    env.define(&svc, &hostile_service(&svc, &vol, &script));
    env.ok(&["deploy", &svc]);
    let local = env.dir.path().join("payload");
    std::fs::write(&local, vec![b'x'; 256 * 1024]).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..60 {
        let r = env.mcp(&["push", local.to_str().unwrap(), &svc, &format!("f{i}")]);
        if r.code == 0 { ok += 1 } else { refused += 1 }
        assert_untouched(&v);
    }
    eprintln!("pushes: {ok} completed, {refused} refused; the host file was never touched");
}

/// A static program swapping two paths atomically and forever (renameat2 RENAME_EXCHANGE),
/// built with gcc into `dir`: a faster swapper than any shell loop.
fn swapper(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("swapper.c");
    std::fs::write(
        &src,
        "#define _GNU_SOURCE\n#include <fcntl.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n#include <linux/fs.h>\n\
         int main(int c, char **v) { for (;;) syscall(SYS_renameat2, AT_FDCWD, v[1], AT_FDCWD, v[2], RENAME_EXCHANGE); }\n",
    )
    .unwrap();
    let bin = dir.join(".swapper");
    let out = std::process::Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&bin).arg(&src).output().expect("gcc runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bin
}

/// #13.3: the container swaps a directory of its volume with a symlink to a host directory,
/// atomically and as fast as it can; pushes into it never land outside, pulls from it never
/// return an outside file.
#[test]
fn directory_swapped_for_a_symlink_never_leads_a_transfer_outside() {
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(vol.join("sub/data"), "inside\n").unwrap();
    std::fs::write(outside.join("data"), "OUTSIDE\n").unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("alt")).unwrap();
    swapper(&vol);
    let svc = env.svc("swapdir");
    env.define(&svc, &hostile_service(&svc, &vol, "exec /data/.swapper /data/sub /data/alt"));
    env.ok(&["deploy", &svc]);
    let local = env.dir.path().join("payload");
    std::fs::write(&local, "pushed\n").unwrap();
    let back = env.dir.path().join("back");
    let (mut pushes, mut pulls, mut outside_pulls) = (0, 0, 0);
    for i in 0..150 {
        if env.mcp(&["push", local.to_str().unwrap(), &svc, &format!("sub/p{i}")]).code == 0 {
            pushes += 1;
        }
        let _ = std::fs::remove_file(&back);
        if env.mcp(&["pull", &svc, "sub/data", back.to_str().unwrap()]).code == 0 {
            pulls += 1;
            if std::fs::read_to_string(&back).unwrap() != "inside\n" {
                outside_pulls += 1;
            }
        }
    }
    let landed = std::fs::read_dir(&outside).unwrap().count() - 1;
    eprintln!("150 rounds against the swapper: {pushes} pushes and {pulls} pulls went through; {landed} pushes landed outside, {outside_pulls} pulls returned an outside file");
    assert_eq!((landed, outside_pulls), (0, 0), "transfers left the volume");
    assert_eq!(std::fs::read_to_string(outside.join("data")).unwrap(), "OUTSIDE\n");
}

/// #13.4 and #13.5: a FIFO in a volume is refused at once (it used to hang `mcp pull` forever,
/// and in the daemon every other transfer behind it); setuid/setgid bits travel neither way.
#[test]
fn fifos_are_refused_without_hanging_and_setuid_bits_never_travel() {
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let svc = env.svc("fifo");
    let script = "/bin/busybox mkfifo /data/pipe; /bin/busybox echo suid > /data/suid; \
                  /bin/busybox chmod 6755 /data/suid; /bin/busybox touch /data/ready; exec /bin/busybox sleep 3600";
    env.define(&svc, &hostile_service(&svc, &vol, script));
    env.ok(&["deploy", &svc]);
    assert!(wait_for(Duration::from_secs(30), || vol.join("ready").exists().then_some(())).is_some());
    let mut daemon = None;
    for round in ["standalone agent", "through the daemon"] {
        if daemon.is_none() && round == "through the daemon" {
            daemon = Some(env.start_daemon(&[]));
        }
        let started = Instant::now();
        let r = env.mcp(&["pull", &svc, "pipe", env.dir.path().join("p").to_str().unwrap()]);
        assert!(started.elapsed() < Duration::from_secs(10), "{round}: pull of a FIFO took {:?}", started.elapsed());
        assert_ne!(r.code, 0, "{round}");
        assert!(r.stderr.contains("not a regular file"), "{round}: {}", r.stderr);
        // Another transfer right after is not stuck behind it.
        let out = env.dir.path().join("suid-back");
        let _ = std::fs::remove_file(&out);
        env.ok(&["pull", &svc, "suid", out.to_str().unwrap()]);
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777, 0o755, "{round}: setuid/setgid pulled");
    }
    let local = env.dir.path().join("mine");
    std::fs::write(&local, "x").unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o6755)).unwrap();
    env.ok(&["push", local.to_str().unwrap(), &svc, "pushed-suid"]);
    assert_eq!(std::fs::metadata(vol.join("pushed-suid")).unwrap().permissions().mode() & 0o7777, 0o755, "setuid/setgid pushed");
}

/// #13.2: baking a VM reads volumes whose owner planted symlinks: the outer volume has one
/// where the inner volume is mounted (to a host dir) and one to a host file. The bake must
/// write nothing outside the staging tree, and the inner volume is what the VM sees there.
#[test]
fn planted_symlinks_never_make_vm_baking_write_outside() {
    let env = Env::new();
    let (outer, inner, victim_dir) = (env.dir.path().join("outer"), env.dir.path().join("inner"), env.dir.path().join("victim-dir"));
    for d in [&outer, &inner, &victim_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let v = victim(env.dir.path());
    std::fs::write(inner.join("index.html"), "from the inner volume\n").unwrap();
    // The outer volume's owner plants the links.
    let planter = env.svc("planter");
    let script = format!(
        "/bin/busybox ln -s {} /data/www; /bin/busybox ln -s {} /data/trunc; /bin/busybox touch /data/ready; exec /bin/busybox sleep 3600",
        victim_dir.display(),
        v.display()
    );
    env.define(&planter, &hostile_service(&planter, &outer, &script));
    env.ok(&["deploy", &planter]);
    assert!(wait_for(Duration::from_secs(30), || outer.join("ready").exists().then_some(())).is_some());

    let g = common::guest::guest();
    let svc = env.svc("baked");
    let port = free_port();
    env.define(
        &svc,
        &format!(
            "name = \"{svc}\"\nnode = \"local\"\n\n[[components]]\nname = \"vm\"\nkind = \"unikernel\"\nkernel = \"{}\"\ninitrd = \"{}\"\n\
             append = \"quiet\"\nvolumes = [\"{}:/srv\", \"{}:/srv/www\"]\nnetwork = \"user\"\nports = [\"127.0.0.1:{port}:8080\"]\nstop_timeout = 0\n",
            g.kernel.display(),
            g.initrd.display(),
            outer.display(),
            inner.display()
        ),
    );
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0, "the bake wrote into a host dir through a planted symlink");
    assert_untouched(&v);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(http_get(port, Duration::from_secs(90)).as_deref(), Some("from the inner volume\n"), "the inner volume is mounted over the link");
}

/// What a container prints reaches the operator's terminal only escaped: `mcp logs` on a
/// terminal (a pty made by `script`) shows ESC and BEL as `\x1b`, `\x07` (to a pipe they go as
/// written, `--raw` keeps them on a terminal), and an error carrying the container's last
/// lines (a replacement that died) is escaped on stderr.
#[test]
fn container_output_never_drives_the_operators_terminal() {
    let env = Env::new();
    let svc = env.svc("ansi");
    let evil = r#"printf '\033]0;pwned\007\033[2Jcleared\n'"#;
    let def = |tail: &str| {
        format!(
            "name = \"{svc}\"\nnode = \"local\"\n[[components]]\nname = \"web\"\nimage = \"{IMAGE}\"\nstop_timeout = 0\n\
             cmd = [\"sh\", \"-c\", \"{}; {tail}\"]\n",
            evil.replace('\\', "\\\\").replace('"', "\\\"")
        )
    };
    env.define(&svc, &def("exec sleep 600"));
    env.ok(&["deploy", &svc]);
    let logged = wait_for(Duration::from_secs(10), || {
        let r = env.ok(&["logs", &svc]);
        r.stdout.contains("cleared").then_some(r.stdout)
    })
    .expect("the container printed");
    assert!(logged.contains("\x1b]0;pwned\x07"), "a pipe gets the bytes as written: {logged:?}");
    let on_tty = |extra: &str| {
        let cmd = format!("{MCP} --config {} logs {svc} {extra}", env.config.display());
        let out = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).env("HOME", &env.home).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_tty("");
    assert!(shown.contains("\\x1b]0;pwned\\x07\\x1b[2Jcleared"), "escaped on a terminal: {shown:?}");
    assert!(!shown.contains('\x1b') && !shown.contains('\x07'), "{shown:?}");
    assert!(on_tty("--raw").contains("\x1b]0;pwned"), "--raw keeps them");

    // A replacement that prints and dies: the error quotes its output, escaped.
    env.define(&svc, &def("exit 3"));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("\\x1b]0;pwned"), "{:?}", r.stderr);
    assert!(!r.stderr.contains('\x1b') && !r.stderr.contains('\x07'), "{:?}", r.stderr);
}
