//! Nanos unikernels for real: the toolchain built from the pinned Nanos source, guest programs
//! built from tests/guest, images made by the agent with that mkfs, booted by qemu under TCG.
//! The seed's case (HTTPS with a certificate and key baked from a volume), the program form's
//! whole lifecycle over user networking, isolated networks with assigned addresses inside a
//! network namespace, the disk-image forms, and bad definitions refused before anything runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nanos::{agent_toml, https_get, program_service, programs, test_ca, toolchain};
use common::*;

/// Nanos boots in under a second under TCG; generous for a loaded CI machine.
const BOOT: Duration = Duration::from_secs(60);

fn vm_dir(env: &Env, svc: &str) -> PathBuf {
    env.state.join("vms").join(format!("{svc}-app"))
}

/// The running qemu of the service's `app` VM.
fn app_pid(env: &Env, svc: &str) -> Option<i32> {
    vm_pid(env, &format!("{svc}-app"))
}

/// Every process's command line on this machine that contains `needle`.
fn processes_showing(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .map(cmdline_of)
        .filter(|c| c.contains(needle))
        .collect()
}

fn change(out: &serde_json::Value) -> String {
    out["result"]["changes"][0]["change"].as_str().unwrap_or_default().to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The seed's headline case: a service deployed as a Nanos unikernel, booting with its baked
/// /srv/mcat config and certificates, serving HTTPS, verified against the CA that made them.
#[test]
fn seed_case_https_with_certificate_and_key_baked_from_a_volume() {
    let env = Env::new();
    agent_toml(&env.state, "");
    let svc = env.svc("mcat");
    let srv = env.dir.path().join("srv-mcat");
    let (ca, cert, key) = test_ca(&env.dir.path().join("pki"));
    std::fs::create_dir_all(srv.join("tls")).unwrap();
    std::fs::copy(cert, srv.join("tls/cert.pem")).unwrap();
    std::fs::copy(key, srv.join("tls/key.pem")).unwrap();
    write(&srv.join("www/index.html"), "mcat over tls\n");
    let port = free_port();
    let fields = format!(
        "cmd = [\"serve-tls\", \"8443\", \"/srv/mcat/www\", \"/srv/mcat/tls/cert.pem\", \"/srv/mcat/tls/key.pem\"]\n\
         env = {{ GREETING = \"hi\" }}\nvolumes = [\"{}:/srv/mcat\"]\nnetwork = \"user\"\nports = [\"127.0.0.1:{port}:8443\"]\n\
         memory = \"256M\"\nrestart = \"always\"\n",
        srv.display()
    );
    env.define(&svc, &program_service(&svc, &programs().static_tls, &fields));
    let out = env.ok(&["deploy", &svc, "--json"]).json();
    assert_eq!(change(&out), "created", "{out}");
    assert_eq!(https_get(port, &ca, BOOT).as_deref(), Some("mcat over tls\n"), "HTTPS through the forward, verified against the test CA");
    let logs = env.ok(&["logs", &svc]).stdout;
    assert!(logs.contains("mcp-guest: serving /srv/mcat/www on 8443 (tls)") && logs.contains("greeting=hi"), "{logs}");
    // Built by the agent with the toolchain's mkfs: an owner-only image (it holds the env).
    let disk = vm_dir(&env, &svc).join("disk.img");
    assert_eq!(std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!vm_dir(&env, &svc).join("staging").exists(), "no second copy of the volume is kept");
    let pid = app_pid(&env, &svc).expect("a running VM");
    assert!(cmdline_of(pid).contains(&format!("file={},snapshot=on", disk.display())), "{}", cmdline_of(pid));
}

/// The program form with a dynamically linked program (its interpreter and libraries are
/// collected into the image) over user networking, through every lifecycle command.
#[test]
fn program_form_over_user_networking_full_lifecycle() {
    let env = Env::new();
    agent_toml(&env.state, "");
    let svc = env.svc("prog");
    let program = env.dir.path().join("bin/mcat");
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    std::fs::copy(&programs().dynamic, &program).unwrap();
    let bytes = std::fs::read(&program).unwrap();
    assert!(bytes.windows(20).any(|w| w == b"ld-linux-x86-64.so.2"), "the test program is dynamically linked");
    let www = env.dir.path().join("www");
    write(&www.join("index.html"), "v1\n");
    let port = free_port();
    let secret = "greeting-secret-7f3a";
    let fields = format!(
        "cmd = [\"serve\", \"8080\", \"/srv/www\"]\nenv = {{ GREETING = \"{secret}\" }}\nvolumes = [\"{}:/srv/www\"]\n\
         network = \"user\"\nports = [\"127.0.0.1:{port}:8080\"]\nrestart = \"always\"\n",
        www.display()
    );
    env.define(&svc, &program_service(&svc, &program, &fields));

    assert_eq!(change(&env.ok(&["deploy", &svc, "--json"]).json()), "created");
    assert_eq!(http_get(port, BOOT).as_deref(), Some("v1\n"));
    let logs = wait_for(BOOT, || Some(env.ok(&["logs", &svc]).stdout).filter(|l| l.contains("mcp-guest: started"))).unwrap();
    assert!(logs.contains(&format!("greeting={secret}")) && logs.contains("args=serve 8080 /srv/www"), "{logs}");
    // The environment is in the image, never on a command line.
    assert_eq!(processes_showing(secret), Vec::<String>::new());
    let pid = app_pid(&env, &svc).unwrap();
    assert!(cmdline_of(pid).contains("-machine q35") && cmdline_of(pid).contains("virtio-scsi-pci"), "{}", cmdline_of(pid));

    // Same files: unchanged, nothing restarted.
    assert_eq!(change(&env.ok(&["deploy", &svc, "--json"]).json()), "unchanged");
    assert_eq!(app_pid(&env, &svc), Some(pid));
    // A changed volume file: rebuilt, replaced, new content.
    write(&www.join("index.html"), "v2\n");
    assert_eq!(change(&env.ok(&["deploy", &svc, "--json"]).json()), "replaced");
    assert_eq!(http_get(port, BOOT).as_deref(), Some("v2\n"));
    assert!(!process_alive(pid));
    // A changed program binary: replaced too.
    let pid = app_pid(&env, &svc).unwrap();
    let mut changed = bytes.clone();
    changed.extend_from_slice(b"\0trailing bytes change the file, not what it runs");
    std::fs::write(&program, &changed).unwrap();
    assert_eq!(change(&env.ok(&["deploy", &svc, "--json"]).json()), "replaced");
    assert!(!process_alive(pid));
    assert_eq!(http_get(port, BOOT).as_deref(), Some("v2\n"));

    // stop (graceful: ACPI powerdown, which Nanos honours), start, restart, repair.
    vm_lifecycle(&env, &svc, &format!("{svc}-app"), port, "v2\n", BOOT, |took| {
        assert!(took < Duration::from_secs(5), "stop waited out its timeout ({took:?}): the guest ignored the powerdown");
        assert!(env.ok(&["logs", &svc]).stdout.contains("mcp-guest: serving /srv/www on 8080"), "the console after stop");
    });
}

/// Isolated networks inside a namespace this test makes: the agent gives each Nanos VM a static
/// address; two on one network name reach each other at theirs, one on its own bridge does not.
/// The agent probes a VM there at its own address (`self`) from the network's probe namespace:
/// a healthy one is deployed, one that fails its check is rolled back, and the probe namespace
/// goes with the network's last VM.
#[test]
fn isolated_nanos_services_reach_each_other_at_assigned_addresses() {
    let env = Env::new();
    let netns = Netns::new(&format!("mcp{}", env.prefix));
    let ns = netns.name();
    agent_toml(&env.state, "");
    // nsenter, not `ip netns exec`: the agent stays in the node's mount namespace, as a real
    // one does, so the probe namespaces it makes are seen by every later request.
    env.write_config(&format!("nsenter --net=/run/netns/{ns} {AGENT} rpc --state-dir {}", env.state.display()));
    let www = env.dir.path().join("www");
    write(&www.join("index.html"), "from web\n");
    let prog = &programs().static_tls;
    let (web, friend, stranger) = (env.svc("web"), env.svc("friend"), env.svc("stranger"));
    let web_def = |health: &str| {
        let fields = format!("cmd = [\"serve\", \"8080\", \"/srv/www\"]\nvolumes = [\"{}:/srv/www\"]\nnetwork = \"shared\"\n{health}", www.display());
        program_service(&web, prog, &fields)
    };
    let serving = format!("[components.health]\nhttp = \"http://self:8080/index.html\"\ninterval = \"1s\"\nstart_period = \"{}s\"\n", BOOT.as_secs());
    env.define(&web, &web_def(&serving));
    let deployed = env.ok(&["deploy", &web]);
    assert!(deployed.stderr.contains("is healthy after"), "probed at its own address: {}", deployed.stderr);
    let probe_ns = netns.probe_namespaces();
    assert_eq!(probe_ns.len(), 1, "one probe namespace for the shared network");
    let in_probe_ns = |cmd: &[&str]| -> String {
        let out = std::process::Command::new("ip").args(["netns", "exec", &probe_ns[0]]).args(cmd).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(in_probe_ns(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0", "the probe namespace forwards nothing");
    assert!(!in_probe_ns(&["ip", "-o", "addr"]).contains("inet6"), "and has no IPv6");
    let address_of = |svc: &str| -> String {
        let ps = env.ok(&["ps", "--json"]).json();
        let found = ps["nodes"][0]["result"]["containers"].as_array().unwrap().iter().find(|c| c["service"] == svc).cloned();
        found.and_then(|c| c["address"].as_str().map(str::to_string)).unwrap_or_else(|| panic!("no address for {svc}: {ps}"))
    };
    let web_addr = address_of(&web);
    let web_ip = web_addr.split('/').next().unwrap().to_string();
    let neighbours = in_probe_ns(&["ip", "neigh", "show", &web_ip]);
    assert!(neighbours.contains("PERMANENT"), "web's MAC is pinned for its address: {neighbours}");
    let probe = |name: &str, network: &str| {
        program_service(name, prog, &format!("cmd = [\"probe\", \"{web_ip}:8080\"]\n{network}"))
    };
    env.define(&friend, &probe(&friend, "network = \"shared\"\n"));
    env.define(&stranger, &probe(&stranger, ""));
    env.ok(&["deploy", &friend]);
    env.ok(&["deploy", &stranger]);
    assert_reachability(&env, &friend, &stranger, "from web", BOOT);

    // Three VMs, three addresses from the pool, shown by ps and status.
    let addrs = [web_addr.clone(), address_of(&friend), address_of(&stranger)];
    assert!(addrs.iter().all(|a| a.starts_with("10.213.") && a.ends_with("/16")), "{addrs:?}");
    assert!(addrs[0] != addrs[1] && addrs[1] != addrs[2] && addrs[0] != addrs[2], "{addrs:?}");
    assert!(!addrs.contains(&"10.213.0.1/16".to_string()), "the gateway is the probe namespace's, never a VM's");
    let st = env.ok(&["status", &friend, "--json"]).json();
    assert_eq!(st["nodes"][0]["result"]["services"][0]["components"][0]["address"].as_str(), Some(addrs[1].as_str()), "{st}");
    assert!(env.ok(&["ps"]).stdout.contains(&addrs[1]), "ps shows the address");
    // A redeploy (changed file: replaced) keeps the address; removing a service frees its.
    write(&www.join("index.html"), "from web 2\n");
    // A probe namespace cut off from its bridge (its veth gone) is made again by the next probe.
    in_probe_ns(&["ip", "link", "del", "probe0"]);
    assert_eq!(change(&env.ok(&["deploy", &web, "--json"]).json()), "replaced");
    assert_eq!(address_of(&web), web_addr, "stable across a replace");
    let seen_new = || env.ok(&["logs", &friend]).stdout.matches("probe ok: from web 2").count();
    assert!(wait_for(BOOT, || (seen_new() > 0).then_some(())).is_some(), "the replaced web answers at the same address");

    // A replacement whose check never passes (nothing listens on port 9) is rolled back, and the
    // old web answers at its address again.
    write(&www.join("index.html"), "from web 3\n");
    env.define(&web, &web_def("[components.health]\ntcp = \"self:9\"\ninterval = \"500ms\"\nretries = 2\n"));
    let failed = env.mcp(&["deploy", &web]);
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    let refused = format!("connecting to {web_ip}:9");
    assert!(failed.stderr.contains("did not become healthy") && failed.stderr.contains(&refused), "{}", failed.stderr);
    let before = seen_new();
    assert!(wait_for(BOOT, || (seen_new() > before).then_some(())).is_some(), "the old web serves again after the rollback");
    // Back to what runs, so the syncs below leave web alone.
    write(&www.join("index.html"), "from web 2\n");
    env.define(&web, &web_def(&serving));

    std::fs::remove_file(env.services.join(format!("{stranger}.toml"))).unwrap();
    env.ok(&["sync", "--prune"]);
    let again = env.svc("again");
    env.define(&again, &probe(&again, ""));
    env.ok(&["deploy", &again]);
    assert_eq!(address_of(&again), addrs[2], "the removed service's address is free again");
    // The shared network's last VMs go: its bridge and its probe namespace go with them.
    for svc in [&web, &friend] {
        std::fs::remove_file(env.services.join(format!("{svc}.toml"))).unwrap();
    }
    env.ok(&["sync", "--prune"]);
    assert_eq!(netns.probe_namespaces(), Vec::<String>::new(), "no probe namespace left behind");

    // An agent without CAP_SYS_ADMIN (the NixOS unit's default) says what such a check needs,
    // and the VM it made goes.
    env.write_config(&format!("nsenter --net=/run/netns/{ns} setpriv --bounding-set -sys_admin {AGENT} rpc --state-dir {}", env.state.display()));
    env.define(&web, &web_def("[components.health]\nhttp = \"http://self:8080/\"\ninterval = \"500ms\"\nretries = 2\n"));
    let r = env.mcp(&["deploy", &web]);
    assert!(r.code != 0 && r.stderr.contains("need CAP_SYS_ADMIN: run the agent as root"), "{}", r.stderr);
    assert!(app_pid(&env, &web).is_none() && netns.probe_namespaces().is_empty(), "nothing left behind");
}

/// The disk-image forms with the toolchain configured: a prebuilt image boots as it is; the
/// image form with volumes is rebuilt from the program in cmd[0] with mkfs (no ops). The
/// prebuilt image is made the way the flake's lib.mkNanosImage makes it: the component
/// rendered by modules/nanos-image.nix with the real nix, handed to `mcp-agent build-image`.
#[test]
fn disk_image_forms_boot_with_the_toolchain() {
    let env = Env::new();
    agent_toml(&env.state, "");
    let prog = &programs().static_tls;
    let www = env.dir.path().join("www");
    write(&www.join("index.html"), "prebuilt\n");
    let expr = format!(
        "(import ./modules/nanos-image.nix).component {{ program = \"{}\"; args = [ \"serve\" \"8080\" \"/srv/www\" ]; \
         env = {{ GREETING = \"from-nix\"; }}; files = {{ \"/srv/www\" = \"{}\"; }}; }}",
        prog.display(),
        www.display()
    );
    let rendered = std::process::Command::new("nix-instantiate")
        .args(["--option", "build-users-group", "", "--eval", "--strict", "--json", "-E", &expr])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("nix-instantiate runs (apt-get install nix-bin)");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let component = env.dir.path().join("component.json");
    std::fs::write(&component, &rendered.stdout).unwrap();
    let image = env.dir.path().join("prebuilt.img");
    let built = std::process::Command::new(AGENT)
        .args(["build-image", "--component"])
        .arg(&component)
        .arg("--out")
        .arg(&image)
        .arg("--nanos-dir")
        .arg(toolchain())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert_eq!(std::fs::metadata(&image).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(env.dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".mcp-build")).count(), 0, "no scratch left");
    // A component that is not the program form is refused with the reason (exit 2 for an
    // invalid one).
    std::fs::write(&component, r#"{"name":"image","kind":"unikernel","program":"relative/path"}"#).unwrap();
    let bad = std::process::Command::new(AGENT).args(["build-image", "--component"]).arg(&component).arg("--out").arg(env.dir.path().join("x.img")).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("program: \"relative/path\" is not a usable path"), "{bad:?}");

    let svc = env.svc("img");
    let port = free_port();
    let def = |fields: &str| {
        format!(
            "name = \"{svc}\"\nnode = \"local\"\n\n[[components]]\nname = \"app\"\nkind = \"unikernel\"\nimage = \"{}\"\n\
             network = \"user\"\nports = [\"127.0.0.1:{port}:8080\"]\nstop_timeout = 5\n{fields}",
            image.display()
        )
    };
    env.define(&svc, &def(""));
    env.ok(&["deploy", &svc]);
    assert_eq!(http_get(port, BOOT).as_deref(), Some("prebuilt\n"));
    let pid = app_pid(&env, &svc).unwrap();
    assert!(cmdline_of(pid).contains(&format!("file={},snapshot=on", image.display())), "booted as it is");
    assert!(env.ok(&["logs", &svc]).stdout.contains("greeting=from-nix"), "the environment Nix gave is in the image");

    // With volumes: rebuilt from cmd[0] by the agent's mkfs.
    let baked = env.dir.path().join("baked");
    write(&baked.join("index.html"), "rebuilt with volumes\n");
    env.define(
        &svc,
        &def(&format!("cmd = [\"{}\", \"serve\", \"8080\", \"/srv/www\"]\nvolumes = [\"{}:/srv/www\"]\n", prog.display(), baked.display())),
    );
    assert_eq!(change(&env.ok(&["deploy", &svc, "--json"]).json()), "replaced");
    assert_eq!(http_get(port, BOOT).as_deref(), Some("rebuilt with volumes\n"));
    let pid = app_pid(&env, &svc).unwrap();
    assert!(cmdline_of(pid).contains(&format!("file={},snapshot=on", vm_dir(&env, &svc).join("disk.img").display())), "{}", cmdline_of(pid));
}

/// Each bad definition is refused with a message naming the component, before any VM is
/// touched: the running version keeps its process and keeps serving.
#[test]
fn bad_program_definitions_are_refused_before_any_vm_is_touched() {
    let env = Env::new();
    agent_toml(&env.state, "");
    let svc = env.svc("bad");
    let www = env.dir.path().join("www");
    write(&www.join("index.html"), "still serving\n");
    let port = free_port();
    let fields = format!(
        "cmd = [\"serve\", \"8080\", \"/srv/www\"]\nvolumes = [\"{}:/srv/www\"]\nnetwork = \"user\"\nports = [\"127.0.0.1:{port}:8080\"]\n",
        www.display()
    );
    env.define(&svc, &program_service(&svc, &programs().static_tls, &fields));
    env.ok(&["deploy", &svc]);
    assert_eq!(http_get(port, BOOT).as_deref(), Some("still serving\n"));
    let pid = app_pid(&env, &svc).unwrap();
    let vms = || std::fs::read_dir(env.state.join("vms")).unwrap().count();

    let dir = env.dir.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script");
    write(&script, "#!/bin/sh\necho hi\n");
    let dynamic = std::fs::read(&programs().dynamic).unwrap();
    let mut arm = dynamic.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(dir.join("arm"), &arm).unwrap();
    // DT_NEEDED renamed in the dynamic string table: a library no loader can find.
    let at = dynamic.windows(14).position(|w| w == b"libgcc_s.so.1\0").expect("the program needs libgcc_s");
    let mut needs = dynamic.clone();
    needs[at..at + 13].copy_from_slice(b"libmcpnone.so");
    std::fs::write(dir.join("needs-missing"), &needs).unwrap();

    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.join("missing"), "cannot read program"),
        (script.clone(), "is not an ELF file"),
        (dir.join("arm"), "the guest runs x86-64 programs"),
        (dir.join("needs-missing"), "library libmcpnone.so (needed by"),
    ];
    for (program, expect) in &cases {
        env.define(&svc, &program_service(&svc, program, &fields));
        let r = env.mcp(&["deploy", &svc]);
        assert_ne!(r.code, 0, "{}", program.display());
        assert!(r.stderr.contains("component app:") && r.stderr.contains(expect), "{expect}: {}", r.stderr);
        assert_eq!(app_pid(&env, &svc), Some(pid), "the running version was not touched");
        assert_eq!(vms(), 1);
    }
    // A volume over the program's own path: refused by validation (exit 2).
    let over = fields.replace(":/srv/www\"]", ":/srv/www\", \"/tmp:/opt\"]");
    env.define(&svc, &program_service(&svc, Path::new("/opt/app/serve"), &over));
    let r = env.mcp(&["deploy", &svc]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("collides with the program /opt/app/serve"), "{}", r.stderr);

    // The toolchain missing, or incomplete.
    env.define(&svc, &program_service(&svc, &programs().dynamic, &fields));
    std::fs::write(env.state.join("agent.toml"), "").unwrap();
    let r = env.mcp(&["deploy", &svc]);
    assert!(r.code != 0 && r.stderr.contains("component app: no Nanos toolchain is configured ([nanos] dir"), "{}", r.stderr);
    let partial = env.dir.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for f in ["kernel.img", "boot.img"] {
        std::fs::copy(toolchain().join(f), partial.join(f)).unwrap();
    }
    std::fs::write(env.state.join("agent.toml"), format!("[nanos]\ndir = \"{}\"\n", partial.display())).unwrap();
    let r = env.mcp(&["deploy", &svc]);
    assert!(r.code != 0 && r.stderr.contains("lacks mkfs"), "{}", r.stderr);
    let shown = std::process::Command::new(AGENT).arg("--state-dir").arg(&env.state).arg("config").output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("# Nanos toolchain: none; program-form unikernels cannot be built"), "{shown:?}");
    assert_eq!(app_pid(&env, &svc), Some(pid));
    assert_eq!(http_get(port, BOOT).as_deref(), Some("still serving\n"));
    agent_toml(&env.state, "");
    let shown = std::process::Command::new(AGENT).arg("--state-dir").arg(&env.state).arg("config").output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("# Nanos toolchain: {}", toolchain().display())), "{shown:?}");
}
