//! What a VM boots from, built per form: the kernel form's initrd with the staged tree
//! appended, a Nanos image from the program (its ELF, libraries and volumes) with the
//! toolchain's mkfs, or (image form with volumes, no toolchain) an `ops` build. Everything a
//! build bakes is first checked and fingerprinted by [`Qemu::guest_contents`], which the
//! spec hash includes: a problem (no toolchain, not an ELF, a library missing) is found
//! before any VM is touched, and a changed file means a new spec.

use std::path::{Path, PathBuf};

use super::argv::Form;
use super::net::static_ip;
use super::record::VmPaths;
use crate::runtime::io_err;
use super::{Qemu, GUEST_ENV_FILE};
use crate::plan::{binds, Component};
use crate::runtime::bake::elf::{self, Loader};
use crate::runtime::bake::nanos::{self, Manifest, Toolchain};
use crate::runtime::bake::tree::Fingerprint;
use crate::runtime::bake::{cpio, ops, GuestTree};
use crate::runtime::RuntimeError;

fn unusable(comp: &Component, why: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Unsupported(format!("component {}: {why}", comp.name))
}

/// The program a Nanos image runs, and its arguments after argv[0].
fn program_of(comp: &Component) -> (&str, &[String]) {
    match &comp.program {
        Some(p) => (p, &comp.cmd),
        // The image form with volumes: rebuilt from the program in cmd[0].
        None => (comp.cmd.first().map(String::as_str).unwrap_or_default(), comp.cmd.get(1..).unwrap_or_default()),
    }
}

/// The guest tree of the kernel and ops forms: the volumes only.
fn volume_tree(comp: &Component) -> Result<GuestTree, RuntimeError> {
    GuestTree::new(binds(&comp.volumes), Vec::new()).map_err(|e| unusable(comp, e))
}

/// A Nanos build's inputs, checked.
struct NanosInputs {
    toolchain: Toolchain,
    tree: GuestTree,
    /// The program's path in the guest.
    program: PathBuf,
}

/// Check and gather what a Nanos image of `comp` is made of.
fn nanos_inputs(comp: &Component, toolchain: Result<Toolchain, String>) -> Result<NanosInputs, RuntimeError> {
    let toolchain = toolchain.map_err(|e| unusable(comp, e))?;
    let (program, _) = program_of(comp);
    let closure = elf::collect(Path::new(program), &Loader::system()).map_err(|e| unusable(comp, e))?;
    let guest = closure.program.guest.clone();
    let files = closure.files().cloned().collect();
    let tree = GuestTree::new(binds(&comp.volumes), files).map_err(|e| unusable(comp, e))?;
    Ok(NanosInputs { toolchain, tree, program: guest })
}

impl Qemu {
    /// The fingerprint of everything a component's VM bakes from the node (None when it bakes
    /// nothing): volume dirs, a Nanos program with its libraries and the toolchain it is
    /// built with.
    pub(super) fn guest_contents(&self, comp: &Component, form: Form) -> Result<Option<String>, RuntimeError> {
        match form {
            Form::Image => Ok(None),
            Form::Kernel if !form.bakes_initrd(comp) => Ok(None),
            Form::Kernel | Form::Ops => Ok(Some(volume_tree(comp)?.fingerprint().map_err(|e| unusable(comp, e))?)),
            Form::Nanos => {
                let inputs = nanos_inputs(comp, self.nanos.toolchain())?;
                let tree = inputs.tree.fingerprint().map_err(|e| unusable(comp, e))?;
                Ok(Some(nanos_contents(&tree, &inputs.toolchain).map_err(|e| unusable(comp, e))?))
            }
        }
    }

    /// Build what the VM of `comp` boots from into `paths`; returns the fingerprint of what was
    /// baked (as [`Qemu::guest_contents`] computes it) when something was.
    pub(super) fn build(&self, comp: &Component, form: Form, paths: &VmPaths, address: Option<&str>) -> Result<Option<String>, RuntimeError> {
        let staging = paths.staging();
        let baked = match form {
            Form::Image => None,
            Form::Kernel if !form.bakes_initrd(comp) => None,
            Form::Kernel => {
                let contents = volume_tree(comp)?.stage(&staging).map_err(|e| unusable(comp, format!("staging volumes: {e}")))?;
                let env: String = comp.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                let mut extra: Vec<(&str, u32, Vec<u8>)> = Vec::new();
                if !env.is_empty() {
                    extra.push((GUEST_ENV_FILE, 0o600, env.into_bytes()));
                }
                if let Some(a) = address {
                    extra.push(("/etc/mcp/address", 0o644, format!("{a}\n").into_bytes()));
                }
                cpio::initrd_with(comp.initrd.as_deref().map(Path::new), &staging, &extra, &paths.initrd())
                    .map_err(io_err(format!("baking the initrd of {}", comp.name)))?;
                Some(contents)
            }
            Form::Ops => {
                let program = ops::find(self.config.ops.as_deref()).map_err(|e| unusable(comp, e))?;
                let contents = volume_tree(comp)?.stage(&staging).map_err(|e| unusable(comp, format!("staging volumes: {e}")))?;
                ops::build(&program, comp, &staging, &paths.ops_config(), &paths.ops_home(), self.ops_build_limit())
                    .map_err(|e| unusable(comp, e))?;
                // Some ops versions name the image `<name>.img`.
                let suffixed = paths.ops_image().with_extension("img");
                if !paths.ops_image().exists() && suffixed.exists() {
                    std::fs::rename(&suffixed, paths.ops_image()).map_err(io_err(format!("moving {} into place", suffixed.display())))?;
                }
                if !paths.ops_image().exists() {
                    return Err(unusable(comp, format!("ops build succeeded but left no image at {}", paths.ops_image().display())));
                }
                Some(contents)
            }
            Form::Nanos => Some(nanos_image(comp, self.nanos.toolchain(), &staging, &paths.disk(), address, self.nanos.mkfs_timeout())?),
        };
        // The copies are in the image now; don't keep a second set of the volume's files.
        let _ = crate::runtime::bake::tree::remove(&staging);
        Ok(baked)
    }
}

/// Build the Nanos image of `comp` (the program form, or the image form with volumes) into
/// `out`, staging its guest tree in `staging`: what a deploy does, and what `mcp-agent
/// build-image` (the flake's lib.mkNanosImage) does. Returns the fingerprint of what was baked.
pub fn nanos_image(
    comp: &Component,
    toolchain: Result<Toolchain, String>,
    staging: &Path,
    out: &Path,
    address: Option<&str>,
    limit: std::time::Duration,
) -> Result<String, RuntimeError> {
    let inputs = nanos_inputs(comp, toolchain)?;
    let tree = inputs.tree.stage(staging).map_err(|e| unusable(comp, format!("staging the guest tree: {e}")))?;
    let contents = nanos_contents(&tree, &inputs.toolchain).map_err(|e| unusable(comp, e))?;
    let children = nanos::tree_of(staging).map_err(|e| unusable(comp, e))?;
    let (_, args) = program_of(comp);
    let argv0 = inputs.program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ip = address.map(static_ip).transpose().map_err(|e| unusable(comp, format!("assigned address: {e}")))?;
    let manifest = Manifest {
        children,
        program: inputs.program.to_string_lossy().into_owned(),
        arguments: std::iter::once(argv0).chain(args.iter().cloned()).collect(),
        environment: comp.env.clone(),
        ip,
    };
    let secrets: Vec<&str> = comp.env.values().map(String::as_str).collect();
    nanos::mkfs(&inputs.toolchain, &nanos::render(&manifest), out, &secrets, limit).map_err(|e| unusable(comp, e))?;
    Ok(contents)
}

/// A Nanos build's fingerprint: the guest tree's, and the kernel and boot loader it is built
/// with (a new kernel is a new image).
fn nanos_contents(tree: &str, t: &Toolchain) -> std::io::Result<String> {
    let mut fp = Fingerprint::default();
    fp.section(&format!("tree {tree}"));
    for f in [&t.kernel, &t.boot] {
        fp.section(&f.display().to_string());
        fp.update(&std::fs::read(f)?);
    }
    Ok(fp.hex())
}
