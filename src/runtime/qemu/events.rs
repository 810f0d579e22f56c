//! VM events for the monitor: exits come from pidfds (the kernel says when a process ends,
//! without being its parent); new VMs and removed ones from a rescan of the VM dirs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::record;
use crate::runtime::{EventStream, RuntimeEvent};

/// Follows the VMs under one dir; rescans twice a second.
pub(super) struct VmEvents {
    dir: PathBuf,
    /// id -> (name, service, pidfd)
    known: HashMap<String, (String, String, std::os::fd::OwnedFd)>,
    pending: Vec<RuntimeEvent>,
    primed: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const RESCAN: Duration = Duration::from_millis(500);

fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

impl VmEvents {
    /// Follow the VMs under `dir`.
    pub(super) fn new(dir: PathBuf) -> VmEvents {
        VmEvents { dir, known: HashMap::new(), pending: Vec::new(), primed: false, stop: Default::default() }
    }

    fn rescan(&mut self) {
        let mut seen = Vec::new();
        for rec in record::read_all(&self.dir) {
            seen.push(rec.id.clone());
            if self.known.contains_key(&rec.id) {
                continue;
            }
            if let Some(fd) = record::running_pid(&self.dir, &rec).and_then(pidfd_open) {
                if self.primed {
                    self.pending.push(RuntimeEvent { name: rec.name.clone(), service: Some(rec.service.clone()), action: "start".into() });
                }
                self.known.insert(rec.id.clone(), (rec.name, rec.service, fd));
            }
        }
        let gone: Vec<String> = self.known.keys().filter(|id| !seen.contains(id)).cloned().collect();
        for id in gone {
            if let Some((name, service, _)) = self.known.remove(&id) {
                self.pending.push(RuntimeEvent { name, service: Some(service), action: "remove".into() });
            }
        }
        self.primed = true;
    }
}

impl Iterator for VmEvents {
    type Item = RuntimeEvent;

    fn next(&mut self) -> Option<RuntimeEvent> {
        loop {
            if let Some(e) = self.pending.pop() {
                return Some(e);
            }
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            self.rescan();
            if !self.pending.is_empty() {
                continue;
            }
            let ids: Vec<String> = self.known.keys().cloned().collect();
            let mut fds: Vec<libc::pollfd> = ids
                .iter()
                .map(|id| libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&self.known[id].2), events: libc::POLLIN, revents: 0 })
                .collect();
            if fds.is_empty() {
                std::thread::sleep(RESCAN);
                continue;
            }
            // SAFETY: fds is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, RESCAN.as_millis() as i32) };
            if n > 0 {
                for (i, p) in fds.iter().enumerate() {
                    if p.revents != 0 {
                        if let Some((name, service, _)) = self.known.remove(&ids[i]) {
                            self.pending.push(RuntimeEvent { name, service: Some(service), action: "died".into() });
                        }
                    }
                }
            }
        }
    }
}

impl EventStream for VmEvents {
    fn stopper(&self) -> crate::runtime::Stopper {
        let stop = self.stop.clone();
        // Seen within one rescan interval.
        Box::new(move || stop.store(true, std::sync::atomic::Ordering::SeqCst))
    }
}

