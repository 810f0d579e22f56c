//! The qemu command line for a VM, built from its record alone (pure; tested to the exact
//! output). Disk images boot the way nanos' own platform/pc/Makefile runs them: a q35 machine,
//! the disk on virtio-scsi, virtio-net, virtio-rng for the guest's entropy, `-no-reboot` so a
//! guest that ends makes qemu exit (and the restart policy decide).

use serde::{Deserialize, Serialize};

use super::net::isolated_net;
use super::record::{VmPaths, VmRecord};
use crate::plan::{parse_port, Component};

pub const DEFAULT_MEMORY: &str = "256M";

/// What a VM boots from, decided when it is created and kept in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// A Linux kernel (+ initrd; volumes and env baked into an appended archive).
    Kernel,
    /// A prebuilt disk image, booted as it is.
    Image,
    /// A Nanos image mcp built with the toolchain's mkfs (`disk.img`).
    Nanos,
    /// A Nanos image `ops` built (the image form with volumes, without a toolchain).
    Ops,
}

impl Form {
    /// The form of `comp`: the program form, and the image form with volumes, are built as
    /// Nanos images with the toolchain when there is one (`ops` otherwise, image form only).
    pub fn of(comp: &Component, toolchain: bool) -> Form {
        if comp.kernel.is_some() {
            Form::Kernel
        } else if comp.program.is_some() || (!comp.volumes.is_empty() && toolchain) {
            Form::Nanos
        } else if !comp.volumes.is_empty() {
            Form::Ops
        } else {
            Form::Image
        }
    }

    /// The kernel form's initrd is rebuilt with volumes and environment baked in.
    pub fn bakes_initrd(self, comp: &Component) -> bool {
        self == Form::Kernel && (!comp.volumes.is_empty() || !comp.env.is_empty())
    }
}

/// A path inside a qemu option value (`,` is the separator there; `,,` is a comma).
fn opt_path(p: &std::path::Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The qemu command line (without the program) for `rec` with files in `paths`.
pub fn qemu_argv(rec: &VmRecord, paths: &VmPaths) -> Vec<String> {
    let c = &rec.comp;
    let mut a: Vec<String> = Vec::new();
    fn push(a: &mut Vec<String>, flag: &str, value: String) {
        a.push(flag.to_string());
        a.push(value);
    }
    let form = rec.form.unwrap_or_else(|| Form::of(c, false));
    // `process=` puts the id in the command line: a recycled pid is never taken for the VM.
    push(&mut a, "-name", format!("{},process=mcp-{}", rec.name, rec.id));
    if form != Form::Kernel {
        push(&mut a, "-machine", "q35".into());
    }
    push(&mut a, "-accel", rec.accel.clone());
    push(&mut a, "-m", c.memory.clone().unwrap_or_else(|| DEFAULT_MEMORY.into()));
    push(&mut a, "-smp", c.cpus.unwrap_or(1).to_string());
    a.extend(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"].map(String::from));
    push(&mut a, "-serial", format!("file:{}", opt_path(&paths.serial())));
    push(&mut a, "-qmp", format!("unix:{},server=on,wait=off", opt_path(&paths.qmp())));
    push(&mut a, "-pidfile", paths.pid().display().to_string());
    a.push("-daemonize".into());
    let disk = match form {
        Form::Kernel => {
            push(&mut a, "-kernel", c.kernel.clone().unwrap_or_default());
            if form.bakes_initrd(c) {
                push(&mut a, "-initrd", paths.initrd().display().to_string());
            } else if let Some(i) = &c.initrd {
                push(&mut a, "-initrd", i.clone());
            }
            let mut line = String::from("console=ttyS0");
            if let Some(extra) = &c.append {
                line.push(' ');
                line.push_str(extra);
            }
            if !c.cmd.is_empty() {
                line.push_str(" -- ");
                line.push_str(&c.cmd.join(" "));
            }
            push(&mut a, "-append", line);
            None
        }
        Form::Image => Some(std::path::PathBuf::from(&c.image)),
        Form::Nanos => Some(paths.disk()),
        Form::Ops => Some(paths.ops_image()),
    };
    if let Some(disk) = disk {
        // snapshot=on: every boot starts from the image as built (writes go to a temp file).
        push(&mut a, "-drive", format!("if=none,id=hd0,format=raw,file={},snapshot=on", opt_path(&disk)));
        push(&mut a, "-device", "virtio-scsi-pci,id=scsi0".into());
        push(&mut a, "-device", "scsi-hd,bus=scsi0.0,drive=hd0".into());
        push(&mut a, "-device", "virtio-rng-pci".into());
    }
    if c.network.as_deref() == Some("user") {
        let mut netdev = String::from("user,id=n0");
        for p in c.ports.iter().filter_map(|p| parse_port(p).ok()) {
            let Some(host) = p.host_port else { continue };
            netdev.push_str(&format!(",hostfwd={}:{}:{host}-:{}", p.proto, p.ip.unwrap_or_default(), p.container_port));
        }
        push(&mut a, "-netdev", netdev);
        push(&mut a, "-device", "virtio-net-pci,netdev=n0".into());
    } else {
        let net = isolated_net(rec);
        push(&mut a, "-netdev", format!("tap,id=n0,ifname={},script=no,downscript=no", net.tap));
        push(&mut a, "-device", format!("virtio-net-pci,netdev=n0,mac={}", net.mac));
    }
    a
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::plan::Kind;

    pub fn rec(comp: Component) -> VmRecord {
        VmRecord {
            id: "vm-0123456789abcdef".into(),
            name: "svc-vm".into(),
            service: "svc".into(),
            component: "vm".into(),
            spec: "h".into(),
            created_at: 0,
            started_at: None,
            form: None,
            comp,
            accel: "tcg".into(),
            address: None,
        }
    }

    #[test]
    fn kernel_form_exact() {
        let mut comp = Component {
            name: "vm".into(),
            kind: Kind::Unikernel,
            kernel: Some("/k/vmlinuz".into()),
            initrd: Some("/k/initrd.gz".into()),
            append: Some("quiet".into()),
            network: Some("user".into()),
            ports: vec!["127.0.0.1:18080:8080".into(), "9000:9000/udp".into()],
            volumes: vec!["/srv/www:/srv/www".into()],
            cmd: vec!["serve".into(), "--port=8080".into()],
            memory: Some("128M".into()),
            cpus: Some(2),
            ..Default::default()
        };
        comp.env.insert("SECRET".into(), "hunter2".into());
        let paths = VmPaths { dir: "/state/vms/svc-vm".into() };
        let argv = qemu_argv(&rec(comp), &paths);
        let expected: Vec<&str> = vec![
            "-name", "svc-vm,process=mcp-vm-0123456789abcdef", "-accel", "tcg", "-m", "128M", "-smp", "2",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "file:/state/vms/svc-vm/serial.log",
            "-qmp", "unix:/state/vms/svc-vm/qmp.sock,server=on,wait=off",
            "-pidfile", "/state/vms/svc-vm/pid", "-daemonize",
            "-kernel", "/k/vmlinuz", "-initrd", "/state/vms/svc-vm/initrd.img",
            "-append", "console=ttyS0 quiet -- serve --port=8080",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=udp::9000-:9000",
            "-device", "virtio-net-pci,netdev=n0",
        ];
        assert_eq!(argv, expected);
        assert!(!argv.iter().any(|a| a.contains("hunter2")), "env is baked, never in argv");
    }

    #[test]
    fn nanos_form_exact() {
        let mut comp = Component {
            name: "app".into(),
            kind: Kind::Unikernel,
            program: Some("/srv/bin/mcat".into()),
            cmd: vec!["--config".into(), "/srv/mcat/mcat.toml".into()],
            network: Some("user".into()),
            ports: vec!["127.0.0.1:9443:443".into()],
            volumes: vec!["/srv/mcat:/srv/mcat".into()],
            ..Default::default()
        };
        comp.env.insert("SECRET".into(), "hunter2".into());
        let mut r = rec(comp);
        r.form = Some(Form::Nanos);
        let argv = qemu_argv(&r, &VmPaths { dir: "/state/vms/a,b".into() });
        let expected: Vec<&str> = vec![
            "-name", "svc-vm,process=mcp-vm-0123456789abcdef", "-machine", "q35", "-accel", "tcg", "-m", "256M", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "file:/state/vms/a,,b/serial.log",
            "-qmp", "unix:/state/vms/a,,b/qmp.sock,server=on,wait=off",
            "-pidfile", "/state/vms/a,b/pid", "-daemonize",
            "-drive", "if=none,id=hd0,format=raw,file=/state/vms/a,,b/disk.img,snapshot=on",
            "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,bus=scsi0.0,drive=hd0", "-device", "virtio-rng-pci",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:9443-:443",
            "-device", "virtio-net-pci,netdev=n0",
        ];
        assert_eq!(argv, expected);
        assert!(!argv.iter().any(|a| a.contains("hunter2") || a.contains("mcat.toml")), "env and args are in the image");
    }

    #[test]
    fn forms_and_defaults() {
        let image = Component { name: "vm".into(), kind: Kind::Unikernel, image: "/nix/store/x.img".into(), ..Default::default() };
        assert_eq!(Form::of(&image, true), Form::Image);
        let s = qemu_argv(&rec(image.clone()), &VmPaths { dir: "/d".into() }).join(" ");
        assert!(s.contains("-m 256M -smp 1"), "{s}");
        assert!(s.contains("-drive if=none,id=hd0,format=raw,file=/nix/store/x.img,snapshot=on"), "{s}");
        assert!(s.contains("-netdev tap,id=n0,ifname=mcpt"), "isolated by default: {s}");
        // The image form with volumes: rebuilt from cmd[0] with the toolchain, else by ops.
        let mut with_vols = image;
        with_vols.volumes = vec!["/srv/app:/srv/app".into()];
        with_vols.cmd = vec!["/opt/app/server".into()];
        assert_eq!(Form::of(&with_vols, true), Form::Nanos);
        assert_eq!(Form::of(&with_vols, false), Form::Ops);
        let s = qemu_argv(&rec(with_vols), &VmPaths { dir: "/state/vms/s-vm".into() }).join(" ");
        assert!(s.contains("file=/state/vms/s-vm/ops/images/mcp-baked,snapshot=on"), "a record without a form is read as before: {s}");
        // Unbaked kernel form keeps the given initrd.
        let k = Component { name: "vm".into(), kind: Kind::Unikernel, kernel: Some("/k".into()), initrd: Some("/i".into()), ..Default::default() };
        assert_eq!(Form::of(&k, true), Form::Kernel);
        let s = qemu_argv(&rec(k), &VmPaths { dir: "/d".into() }).join(" ");
        assert!(s.contains("-kernel /k -initrd /i -append console=ttyS0"), "{s}");
        assert!(!s.contains("-machine"), "{s}");
    }
}
