//! A tiny guest for the unikernel tests, built at test time from Debian's kernel package and
//! busybox-static (cached in the build dir between runs). Its /init loads the virtio-net
//! drivers, takes QEMU user-mode networking's address (10.0.2.15/24 via 10.0.2.2), sources the
//! baked environment and serves /srv/www (a baked volume) over HTTP on port 8080.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

static GUEST: OnceLock<Guest> = OnceLock::new();

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
if [ -f /etc/mcp/env ]; then set -a; . /etc/mcp/env; set +a; fi
ip link set lo up
ip link set eth0 up
# User-mode networking's address unless the baked env gives one (isolated networks).
ip addr add ${GUEST_IP:-10.0.2.15/24} dev eth0
[ -z "$GUEST_IP" ] && ip route add default via 10.0.2.2
echo "mcp-guest: serving /srv/www on 8080 (greeting=$GREETING args=$*)"
httpd -f -p 8080 -h /srv/www &
# PROBE=HOST:PORT: report once a second whether HTTP answers there (reachability between VMs;
# busybox nc, as Debian's static busybox wget crashes).
if [ -n "$PROBE" ]; then
  while true; do
    out=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "${PROBE%:*}" "${PROBE#*:}" 2>/dev/null)
    case "$out" in *" 200 OK"*) echo "probe ok: $(echo "$out" | tail -n 1)" ;; *) echo "probe failed" ;; esac
    sleep 1
  done &
fi
while true; do sleep 3600; done
"#;

const MODULES: &[&str] = &[
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net",
];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A service `name` with one unikernel component `vm` booting this guest, with `www` baked as
/// /srv/www; `fields` are more component fields (network, ports, env, ...), one per line.
pub fn vm_definition(name: &str, www: &Path, fields: &str) -> String {
    let g = guest();
    format!(
        "name = \"{name}\"\nnode = \"local\"\n\n[[components]]\nname = \"vm\"\nkind = \"unikernel\"\n\
         kernel = \"{}\"\ninitrd = \"{}\"\nappend = \"quiet\"\nvolumes = [\"{}:/srv/www\"]\n{fields}",
        g.kernel.display(),
        g.initrd.display(),
        www.display()
    )
}

/// The guest's kernel and initrd (built on first use).
pub fn guest() -> &'static Guest {
    GUEST.get_or_init(|| {
        // A changed /init means another guest.
        let key: u32 = INIT.bytes().fold(5381u32, |h, b| h.wrapping_mul(33) ^ b as u32);
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mcp-guest-{key:08x}"));
        let guest = Guest { kernel: cache.join("vmlinuz"), initrd: cache.join("initrd.gz") };
        if guest.kernel.exists() && guest.initrd.exists() {
            return guest;
        }
        let work = cache.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        // The kernel package the linux-image-amd64 meta package points at (with fresh package
        // lists if this machine has none).
        let depends = || Command::new("apt-cache").args(["depends", "linux-image-amd64"]).output().ok().filter(|o| o.status.success());
        let deps = match depends() {
            Some(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            None => {
                run(Command::new("apt-get").args(["update", "-qq"]));
                run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
            }
        };
        let pkg = deps
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
            .expect("apt knows a linux-image package")
            .to_string();
        run(Command::new("apt-get").args(["download", &pkg]).current_dir(&work));
        let deb = std::fs::read_dir(&work).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "deb")).unwrap();
        let x = work.join("x");
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&x));
        let vmlinuz = std::fs::read_dir(x.join("boot")).unwrap().flatten().map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz")).expect("vmlinuz in the package");

        let root = work.join("root");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "lib/modules", "srv"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(which::which("busybox").expect("busybox-static is installed"), root.join("bin/busybox")).unwrap();
        for tool in ["sh", "mount", "insmod", "ip", "httpd", "sleep", "cat", "echo", "ls", "nc", "tail", "printf"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
        }
        std::fs::write(root.join("init"), INIT).unwrap();
        std::fs::set_permissions(root.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let listing = run(Command::new("find").arg(x.join("lib/modules")).args(["-name", "*.ko"]));
        for m in MODULES {
            if let Some(path) = listing.lines().find(|l| l.ends_with(&format!("/{m}.ko"))) {
                std::fs::copy(path, root.join("lib/modules").join(format!("{m}.ko"))).unwrap();
            }
        }
        let initrd = work.join("initrd.gz");
        run(Command::new("sh")
            .arg("-c")
            .arg(format!("find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'", initrd.display()))
            .current_dir(&root));
        std::fs::copy(&vmlinuz, &guest.kernel).unwrap();
        std::fs::copy(&initrd, &guest.initrd).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        guest
    })
}
