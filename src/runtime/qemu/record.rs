//! What mcp keeps about each VM on disk: one dir per VM under `<state>/vms/` (owner-only)
//! holding `vm.json` (the record), `pid`, `qmp.sock`, `serial.log` (the console), and what
//! it boots from (`initrd.img` or `disk.img`, built from `staging/`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::argv::Form;
use crate::plan::Component;
use crate::runtime::{io_err, RuntimeError};

pub const VMS_DIR: &str = "vms";
const RECORD: &str = "vm.json";

/// What mcp keeps about one VM (its dir's `vm.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub service: String,
    pub component: String,
    /// The registry's spec hash (labels' equivalent).
    pub spec: String,
    pub created_at: i64,
    /// Unix seconds of the last start.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// What it was created from; argv is rebuilt from it at every start.
    pub comp: Component,
    /// What it boots from (None in records written before forms were kept: derived as then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Form>,
    pub accel: String,
    /// Its static address on an isolated network (`10.213.0.2/16`), as the agent assigned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn record(&self) -> PathBuf {
        self.dir.join(RECORD)
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    /// The Nanos image mcp built for it.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
    /// `OPS_HOME` for an ops build of this VM.
    pub fn ops_home(&self) -> PathBuf {
        self.dir.join("ops")
    }
    pub fn ops_config(&self) -> PathBuf {
        self.dir.join("ops-config.json")
    }
    /// Where `ops build -i <name>` leaves the image under [`VmPaths::ops_home`].
    pub fn ops_image(&self) -> PathBuf {
        self.ops_home().join("images").join(crate::runtime::bake::ops::OPS_IMAGE)
    }
}

/// The record of the VM `name` under the VMs dir `vms`. Its name is its dir's: a rename is
/// the one rename of the dir, whatever became of the record's rewrite after it (a full disk).
pub fn load(vms: &Path, name: &str) -> Option<VmRecord> {
    let text = std::fs::read_to_string(vms.join(name).join(RECORD)).ok()?;
    let mut rec: VmRecord = serde_json::from_str(&text).ok()?;
    rec.name = name.to_string();
    Some(rec)
}

/// Write `rec` into its dir (atomically: a crash leaves the old record or the new one).
pub fn save(vms: &Path, rec: &VmRecord) -> Result<(), RuntimeError> {
    let p = VmPaths { dir: vms.join(&rec.name) }.record();
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("records serialize")).map_err(io_err(tmp.display().to_string()))?;
    std::fs::rename(&tmp, &p).map_err(io_err(p.display().to_string()))
}

/// Every VM's record under `vms`, by name.
pub fn read_all(vms: &Path) -> Vec<VmRecord> {
    let Ok(entries) = std::fs::read_dir(vms) else { return Vec::new() };
    let mut out: Vec<VmRecord> = entries.flatten().filter_map(|e| load(vms, &e.file_name().to_string_lossy())).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Is `pid` the qemu of VM `id` (its id is in the command line: a recycled pid never is)?
fn alive(pid: u32, id: &str) -> bool {
    super::strays::cmdline(pid as i32).is_some_and(|c| String::from_utf8_lossy(&c).contains(&format!("process=mcp-{id}")))
}

/// The VM's qemu process, if it runs.
pub fn running_pid(vms: &Path, rec: &VmRecord) -> Option<u32> {
    let pid = std::fs::read_to_string(VmPaths { dir: vms.join(&rec.name) }.pid()).ok()?.trim().parse().ok()?;
    alive(pid, &rec.id).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_named_by_its_dir_whatever_its_record_says() {
        let vms = tempfile::tempdir().unwrap();
        let rec = VmRecord {
            id: "vm-1".into(),
            name: "s-vm".into(),
            service: "s".into(),
            component: "vm".into(),
            spec: "h".into(),
            created_at: 0,
            started_at: None,
            comp: Component::default(),
            form: None,
            accel: "tcg".into(),
            address: None,
        };
        std::fs::create_dir(vms.path().join("s-vm")).unwrap();
        save(vms.path(), &rec).unwrap();
        // Renamed, and the record's rewrite never happened (the disk was full).
        std::fs::rename(vms.path().join("s-vm"), vms.path().join("s-vm.mcp-old")).unwrap();
        let found = read_all(vms.path());
        assert_eq!(found.iter().map(|r| (r.name.as_str(), r.id.as_str())).collect::<Vec<_>>(), [("s-vm.mcp-old", "vm-1")]);
        assert!(load(vms.path(), "s-vm").is_none());
    }
}
