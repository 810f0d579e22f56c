//! Unikernel components on a real qemu-system-x86_64 (TCG): a tiny Linux guest built from
//! Debian's kernel and busybox-static serves a baked volume dir over user-mode networking.
//! Deploy, HTTP through hostfwd, re-bake on change, stop via QMP, start, logs (serial
//! console), and the daemon bringing back a killed VM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::guest::vm_definition;
use common::*;

/// TCG boots take several seconds; generous for a loaded CI machine.
const BOOT: Duration = Duration::from_secs(90);

/// The guest on user networking, port forwarded, with an argument and an environment.
fn vm_service(name: &str, port: u16, www: &std::path::Path, extra: &str) -> String {
    vm_definition(
        name,
        www,
        &format!(
            "network = \"user\"\nmemory = \"256M\"\nports = [\"127.0.0.1:{port}:8080\"]\nstop_timeout = 1\n\
             cmd = [\"--from-mcp\"]\nenv = {{ GREETING = \"hello-from-env\" }}\n{extra}"
        ),
    )
}

#[test]
fn baked_volume_served_through_user_networking_with_full_lifecycle() {
    let env = Env::new();
    let svc = env.svc("uk");
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "baked v1\n").unwrap();
    let port = free_port();
    // A health check through the forwarded port: the deploy returns once the guest serves (QEMU
    // accepts on the host port before the guest listens, so only an HTTP answer counts).
    let health = format!("restart = \"always\"\n[components.health]\nhttp = \"http://127.0.0.1:{port}/index.html\"\ninterval = \"1s\"\nstart_period = \"{}s\"\n", BOOT.as_secs());
    env.define(&svc, &vm_service(&svc, port, &www, &health));
    let name = format!("{svc}-vm");

    let deployed = env.ok(&["deploy", &svc, "--json"]);
    let out = deployed.json();
    assert_eq!(out["result"]["changes"][0]["change"], "created", "{out}");
    assert!(deployed.stderr.contains("is healthy after"), "{}", deployed.stderr);
    assert_eq!(http_get(port, Duration::from_secs(5)).as_deref(), Some("baked v1\n"), "served when the deploy returned, through hostfwd");
    // The state dir holds the VM; env never reaches qemu's command line.
    let pid = vm_pid(&env, &name).expect("a running VM");
    let cmdline = cmdline_of(pid);
    assert!(cmdline.contains("-accel tcg") && cmdline.contains("hostfwd=tcp:127.0.0.1:"), "{cmdline}");
    assert!(!cmdline.contains("hello-from-env"), "{cmdline}");
    // Serial console = logs: the guest printed its env (baked) and its args (kernel command line).
    let logs = wait_for(BOOT, || {
        let l = env.ok(&["logs", &format!("{svc}/vm")]).stdout;
        l.contains("mcp-guest: serving").then_some(l)
    })
    .expect("guest output in logs");
    assert!(logs.contains("greeting=hello-from-env") && logs.contains("--from-mcp"), "{logs}");

    let st = env.ok(&["status", &svc, "--json"]).json();
    let vm = &st["nodes"][0]["result"]["services"][0]["components"][0];
    assert_eq!(vm["observed"], "running", "{st}");
    assert!(vm["drift"].is_null(), "{st}");
    assert!(env.ok(&["ps"]).stdout.contains(&name));

    // Same files: unchanged. Changed file: re-baked and replaced.
    assert_eq!(env.ok(&["deploy", &svc, "--json"]).json()["result"]["changes"][0]["change"], "unchanged");
    std::fs::write(www.join("index.html"), "baked v2\n").unwrap();
    let out = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(out["result"]["changes"][0]["change"], "replaced", "{out}");
    assert_eq!(http_get(port, BOOT).as_deref(), Some("baked v2\n"));
    assert!(!env.state.join("vms").join(format!("{name}.mcp-old")).exists(), "the old VM is gone");

    vm_lifecycle(&env, &svc, &name, port, "baked v2\n", BOOT, |_| {});
}

/// `auto` acceleration (the default): KVM only after a Linux kernel was seen to boot under it.
/// The boot test is checked both ways on real qemu, then the agent's choice with it.
#[test]
fn auto_acceleration_chooses_kvm_only_after_a_kernel_booted_under_it() {
    use mcp::runtime::accel::{run_probe, Probe};
    let kernel = &common::guest::guest().kernel;
    let qemu = which::which("qemu-system-x86_64").expect("qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let scratch = tempfile::tempdir().unwrap();
    // A boot: under TCG the kernel starts, panics for want of a root filesystem, qemu exits.
    let probe = run_probe(&qemu, "tcg", kernel, scratch.path(), BOOT);
    assert!(matches!(probe, Probe::Booted { .. }), "{probe:?}");
    // No boot: not a kernel.
    let bogus = scratch.path().join("not-a-kernel");
    std::fs::write(&bogus, "hello\n").unwrap();
    match run_probe(&qemu, "tcg", &bogus, scratch.path(), BOOT) {
        Probe::Failed(why) => assert!(why.contains("qemu -accel tcg failed"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 1, "the boot test leaves no console log behind");

    // The agent boot-tests KVM with the guest's kernel before its first VM and keeps the verdict.
    let env = Env::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(env.state.join("agent.toml"), format!("[qemu]\nprobe_kernel = \"{}\"\nprobe_secs = 5\n", kernel.display())).unwrap();
    let svc = env.svc("ukaccel");
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "accel\n").unwrap();
    let port = free_port();
    env.define(&svc, &vm_service(&svc, port, &www, ""));
    env.ok(&["deploy", &svc]);
    assert_eq!(http_get(port, BOOT).as_deref(), Some("accel\n"));
    let verdict_file = env.state.join("accel.json");
    let verdict: serde_json::Value = serde_json::from_slice(&std::fs::read(&verdict_file).expect("the verdict is kept")).unwrap();
    let accel = verdict["accel"].as_str().unwrap();
    let why = verdict["why"].as_str().unwrap();
    match accel {
        // What these machines do (shared/ENVIRONMENT.md: KVM hangs Linux boots).
        "tcg" => assert!(why.contains("did not boot within 5s under -accel kvm") || why.contains("qemu -accel kvm failed"), "{why}"),
        "kvm" => assert!(why.starts_with("KVM booted"), "{why}"),
        other => panic!("unexpected accelerator {other}: {why}"),
    }
    let pid = vm_pid(&env, &format!("{svc}-vm")).expect("a running VM");
    let cmdline = cmdline_of(pid);
    assert!(cmdline.contains(&format!("-accel {accel} ")), "{cmdline}");
    let shown = std::process::Command::new(AGENT).arg("--state-dir").arg(&env.state).arg("config").output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("# VMs get -accel {accel}: {why}")), "{shown:?}");
    // The next VM uses the kept verdict: no second boot test.
    let kept = std::fs::metadata(&verdict_file).unwrap().modified().unwrap();
    std::fs::write(www.join("index.html"), "accel 2\n").unwrap();
    assert_eq!(env.ok(&["deploy", &svc, "--json"]).json()["result"]["changes"][0]["change"], "replaced");
    assert_eq!(std::fs::metadata(&verdict_file).unwrap().modified().unwrap(), kept);
    assert_eq!(http_get(port, BOOT).as_deref(), Some("accel 2\n"));
}

#[test]
fn bad_unikernel_definitions_are_refused_before_anything_runs() {
    let env = Env::new();
    let svc = env.svc("ukbad");
    let www = env.dir.path().join("nowhere");
    env.define(&svc, &vm_service(&svc, free_port(), &www, "").replace("kernel = ", "image = \"/x.img\"\nkernel = "));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("set together with image"), "{}", r.stderr);
    // Valid, but the volume dir does not exist on the node: the agent says so, creates nothing.
    env.define(&svc, &vm_service(&svc, free_port(), &www, ""));
    let r = env.mcp(&["deploy", &svc]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
    assert!(!env.state.join("vms").join(format!("{svc}-vm")).exists());

    // An isolated network from an agent without CAP_NET_ADMIN: said so, nothing left behind.
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "x\n").unwrap();
    let isolated = vm_service(&svc, free_port(), &www, "").replace("network = \"user\"\n", "").replace("ports = [", "# ports = [");
    env.define(&svc, &isolated);
    env.write_config(&format!("setpriv --bounding-set=-net_admin {AGENT} rpc --state-dir {}", env.state.display()));
    let r = env.mcp(&["deploy", &svc]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs root or CAP_NET_ADMIN") && r.stderr.contains("network = \"user\""), "{}", r.stderr);
    assert!(!env.state.join("vms").join(format!("{svc}-vm")).exists());
}

/// Isolated networking inside a network namespace this test makes: VMs sharing a network name
/// reach each other over their bridge; a VM on another (its service's own) bridge does not; the
/// bridges have no address, so nothing routes off the host.
#[test]
fn isolated_bridges_separate_services_unless_they_share_a_network() {
    let env = Env::new();
    let ns = Netns::new(&format!("mcp{}", env.prefix));
    let ns = ns.name();
    env.write_config(&format!("ip netns exec {ns} {AGENT} rpc --state-dir {}", env.state.display()));
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from web\n").unwrap();
    let vm = |name: &str, network: Option<&str>, ip: &str, probe: Option<&str>| {
        let network = network.map(|n| format!("network = \"{n}\"\n")).unwrap_or_default();
        let probe = probe.map(|p| format!(", PROBE = \"{p}\"")).unwrap_or_default();
        vm_definition(name, &www, &format!("{network}stop_timeout = 0\nenv = {{ GUEST_IP = \"{ip}\"{probe} }}\n"))
    };
    let (web, friend, stranger) = (env.svc("web"), env.svc("friend"), env.svc("stranger"));
    env.define(&web, &vm(&web, Some("shared"), "10.9.0.2/24", None));
    env.define(&friend, &vm(&friend, Some("shared"), "10.9.0.3/24", Some("10.9.0.2:8080")));
    env.define(&stranger, &vm(&stranger, None, "10.9.0.4/24", Some("10.9.0.2:8080")));
    for s in [&web, &friend, &stranger] {
        env.ok(&["deploy", s]);
    }
    assert_reachability(&env, &friend, &stranger, "from web", BOOT);
    // Two bridges in the namespace, none with an address; nothing of it in the host's.
    let links = std::process::Command::new("ip").args(["netns", "exec", &ns, "ip", "-o", "addr", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.lines().any(|l| l.contains("mcpb") && l.contains("inet")), "{links}");
    let bridges = std::process::Command::new("ip").args(["netns", "exec", &ns, "ip", "-o", "link", "show", "type", "bridge"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&bridges.stdout).lines().count(), 2);
    // Stopping keeps the tap for the next start; removing the service (sync --prune) drops
    // its tap and its now empty bridge.
    env.ok(&["stop", &stranger]);
    std::fs::remove_file(env.services.join(format!("{stranger}.toml"))).unwrap();
    env.ok(&["sync", "--prune"]);
    let bridges = std::process::Command::new("ip").args(["netns", "exec", &ns, "ip", "-o", "link", "show", "type", "bridge"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&bridges.stdout).lines().count(), 1, "the stranger's bridge is gone");
}

/// The disk-image form with volumes on a node with `ops` and no Nanos toolchain: the agent
/// rebuilds the image with `ops` from the program, with the staging root as working dir and
/// its top-level dirs as `Dirs`. PROVES NOTHING ABOUT OPS: ops cannot be installed on these
/// machines. Without ops (and without a toolchain) the agent's error is real; the invocation
/// is then checked against FAKE_OPS, a stand-in that records what it was given and leaves an
/// empty disk image (qemu starts on it, nothing boots). The same form built with the real
/// Nanos toolchain, and booted, is tests/nanos.rs.
#[test]
fn ops_stand_in_proves_nothing_about_ops_only_how_mcp_calls_it() {
    let env = Env::new();
    let svc = env.svc("nanos");
    let app = env.dir.path().join("app");
    std::fs::create_dir_all(app.join("conf")).unwrap();
    std::fs::write(app.join("conf/app.toml"), "port = 8080\n").unwrap();
    let def = format!(
        "name = \"{svc}\"\nnode = \"local\"\n\n[[components]]\nname = \"vm\"\nkind = \"unikernel\"\nimage = \"/nix/store/fake-app.img\"\n\
         network = \"user\"\nvolumes = [\"{}:/srv/app\"]\ncmd = [\"/opt/app/server\", \"--config\", \"/srv/app/conf/app.toml\"]\n\
         env = {{ MODE = \"prod\" }}\nstop_timeout = 0\n",
        app.display()
    );
    env.define(&svc, &def);
    let r = env.mcp(&["deploy", &svc]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs the Nanos toolchain ([nanos] dir") && r.stderr.contains("or `ops` (ops)"), "{}", r.stderr);
    assert!(!env.state.join("vms").join(format!("{svc}-vm")).exists(), "nothing left behind");

    let record = env.dir.path().join("fake-ops.txt");
    let fake = env.dir.path().join("FAKE_OPS");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n# FAKE_OPS: stands in for NanoVMs ops, which cannot run here.\n\
             {{ echo \"argv=$*\"; echo \"cwd=$(pwd)\"; echo \"ops_home=$OPS_HOME\"; echo \"config=$(cat \"$4\")\"; find . | sort; }} > '{}'\n\
             mkdir -p \"$OPS_HOME/images\" && head -c 1048576 /dev/zero > \"$OPS_HOME/images/$6\"\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let conf = env.dir.path().join("agent.toml");
    std::fs::write(&conf, format!("[qemu]\nops = \"{}\"\n", fake.display())).unwrap();
    env.write_config(&format!("{AGENT} rpc --state-dir {} --config {}", env.state.display(), conf.display()));
    env.ok(&["deploy", &svc]);

    let seen = std::fs::read_to_string(&record).unwrap();
    let vm_dir = env.state.join("vms").join(format!("{svc}-vm"));
    let expect_argv = format!("argv=build /opt/app/server -c {} -i mcp-baked", vm_dir.join("ops-config.json").display());
    assert!(seen.contains(&expect_argv), "{seen}");
    assert!(seen.contains(&format!("cwd={}", vm_dir.join("staging").display())), "{seen}");
    assert!(seen.contains(&format!("ops_home={}", vm_dir.join("ops").display())), "{seen}");
    assert!(seen.contains("./srv/app/conf/app.toml"), "the staging tree mirrors the guest path: {seen}");
    // The (pretty-printed) config runs from "config=" to the file listing.
    let config = &seen[seen.find("config=").unwrap() + 7..seen.find("\n.").unwrap()];
    let config: serde_json::Value = serde_json::from_str(config).unwrap();
    assert_eq!(config["Dirs"], serde_json::json!(["srv"]));
    // argv[1..]: ops puts the program (its `build` argument) in front of Args itself.
    assert_eq!(config["Args"][0], "--config");
    assert!(!config["Args"].as_array().unwrap().iter().any(|a| a == "/opt/app/server"), "{config}");
    assert_eq!(config["Env"]["MODE"], "prod");
    let mode = std::fs::metadata(vm_dir.join("ops-config.json")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config may carry secrets");
    // qemu runs the image ops left.
    let pid: i32 = std::fs::read_to_string(vm_dir.join("pid")).unwrap().trim().parse().unwrap();
    let cmdline = cmdline_of(pid);
    assert!(cmdline.contains(&format!("format=raw,file={},snapshot=on", vm_dir.join("ops/images/mcp-baked").display())), "{cmdline}");
}

/// #17: a qemu start that fails (or hangs and is killed at its limit) may leave its
/// daemonized copy running in a session of its own, where the kill of the first process does
/// not reach it: a VM unknown to the registry. The agent kills it by the VM's id in its
/// command line. A stand-in qemu (named so) makes the failure: its daemonized copy comes up,
/// then it reports failure.
#[test]
fn a_failed_qemu_start_leaves_no_vm_behind() {
    let env = Env::new();
    let fake = env.dir.path().join("qemu-stand-in");
    std::fs::write(
        &fake,
        "#!/bin/bash\n# Stand-in for qemu-system-x86_64: a daemonized copy (qemu's arguments in its command line), then a failed start.\n\
         r=\"$0.ready.$$\"\n\
         READY=\"$r\" setsid perl -e 'open(my $f, \">\", $ENV{READY}) or die; close $f; sleep 600' -- \"$@\" </dev/null >/dev/null 2>&1 &\n\
         # Up once perl itself says so (the forked shell carries qemu's arguments too, before its exec).\n\
         while [ ! -e \"$r\" ]; do :; done\nrm -f \"$r\"\n\
         echo 'qemu: injected start failure' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(env.state.join("agent.toml"), format!("[qemu]\nprogram = \"{}\"\naccel = \"tcg\"\n", fake.display())).unwrap();
    let svc = env.svc("ukstray");
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    env.define(&svc, &vm_service(&svc, free_port(), &www, ""));
    let stray = format!("-name {svc}-vm,process=mcp-");
    let r = env.mcp(&["deploy", &svc]);
    let left = process_running(&stray);
    // Whatever happened, nothing of this test runs on.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
            if cmdline_of(pid).contains(&stray) {
                signal(pid as u32, libc::SIGKILL);
            }
        }
    }
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("injected start failure"), "{}", r.stderr);
    assert!(!left, "the failed start's daemonized qemu still runs");
}
