//! Running a VM's qemu: launch (daemonized, so VMs outlive agent restarts), QMP (status,
//! graceful shutdown), and the escalation to `quit` and SIGKILL when a guest does not stop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::argv::qemu_argv;
use super::record::VmRecord;
use super::Qemu;
use crate::registry::now_ms;
use crate::runtime::RuntimeError;

/// How long qemu may take to set a VM up and daemonize.
const START_LIMIT: Duration = Duration::from_secs(120);

/// Parse a QMP reply line: Some(Ok(return)) / Some(Err(error)) for answers, None for events
/// and the greeting.
pub fn qmp_reply(line: &str) -> Option<Result<serde_json::Value, String>> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if let Some(r) = v.get("return") {
        return Some(Ok(r.clone()));
    }
    v.get("error").map(|e| Err(e["desc"].as_str().unwrap_or("error").to_string()))
}

/// QMP lines are short; a longer one is not qemu talking.
const QMP_LINE_MAX: u64 = 64 * 1024;

/// One QMP command on the VM's socket (after the capabilities handshake).
pub fn qmp(socket: &Path, command: &str, timeout: Duration) -> Result<serde_json::Value, RuntimeError> {
    use std::io::Read;
    let fail = |e: std::io::Error| RuntimeError::Io { what: format!("QMP {command} on {}", socket.display()), source: e };
    let stream = UnixStream::connect(socket).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    let mut writer = stream.try_clone().map_err(fail)?;
    let mut reader = BufReader::new(stream);
    let mut ask = |cmd: &str| -> Result<serde_json::Value, RuntimeError> {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}").map_err(fail)?;
        loop {
            let mut line = String::new();
            let n = (&mut reader).take(QMP_LINE_MAX).read_line(&mut line).map_err(fail)?;
            if n == 0 {
                return Err(fail(std::io::ErrorKind::UnexpectedEof.into()));
            }
            match qmp_reply(&line) {
                Some(Ok(v)) => return Ok(v),
                Some(Err(desc)) => return Err(RuntimeError::Exit { program: "qemu", step: format!("qmp {cmd}"), code: 1, stderr: desc }),
                None => continue,
            }
        }
    };
    ask("qmp_capabilities")?;
    ask(command)
}

impl Qemu {
    /// Start the VM described by `rec` (daemonized); records the start time.
    pub(super) fn launch(&self, rec: &mut VmRecord) -> Result<(), RuntimeError> {
        self.net_up(rec)?;
        let paths = self.paths(&rec.name);
        let _ = std::fs::remove_file(paths.pid());
        let _ = std::fs::remove_file(paths.qmp());
        let argv = qemu_argv(rec, &paths);
        tracing::debug!(vm = %rec.name, "qemu {}", argv.join(" "));
        let program = self.program()?;
        // -daemonize: qemu returns once the VM is set up (not booted); a qemu that never does is
        // killed at the limit.
        let mut cmd = Command::new(program);
        cmd.args(&argv).stdin(Stdio::null());
        // What runs as this VM already (a qemu whose pid file was lost) is not the start's.
        let before = super::strays::pids_of(&rec.id);
        let out = super::super::child::output_within(&mut cmd, START_LIMIT)
            .map_err(|source| RuntimeError::Spawn { program: program.display().to_string(), step: "start".into(), source })?;
        let failed = match out.status {
            None => Some(RuntimeError::Hung { program: "qemu", step: format!("start {}", rec.name), secs: START_LIMIT.as_secs() }),
            Some(status) if !status.success() => {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                Some(RuntimeError::Exit { program: "qemu", step: format!("start {}", rec.name), code: status.code().unwrap_or(-1), stderr })
            }
            Some(_) => None,
        };
        if let Some(e) = failed {
            // The daemonized copy leads a session of its own (the kill at the limit did not
            // reach it) and may run on, or come up later, unknown to the registry.
            let strays = super::strays::kill_new(&rec.id, &before);
            if strays > 0 {
                tracing::warn!(vm = %rec.name, strays, "killed what the failed qemu start left running");
            }
            return Err(e);
        }
        rec.started_at = Some(now_ms() / 1000);
        self.save(rec)
    }

    fn wait_gone(&self, rec: &VmRecord, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            if self.pid(rec).is_none() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful: ACPI powerdown (Nanos and Linux with acpid honour it), up to the stop
    /// timeout; then QMP quit; then SIGKILL. Returns once the qemu process is gone.
    pub(super) fn shutdown(&self, rec: &VmRecord) -> Result<(), RuntimeError> {
        let Some(pid) = self.pid(rec) else { return Ok(()) };
        let qmp_sock = self.paths(&rec.name).qmp();
        let grace = Duration::from_secs(rec.comp.stop_timeout.unwrap_or(10) as u64);
        if !grace.is_zero() && qmp(&qmp_sock, "system_powerdown", Duration::from_secs(5)).is_ok() && self.wait_gone(rec, grace) {
            return Ok(());
        }
        if qmp(&qmp_sock, "quit", Duration::from_secs(5)).is_ok() && self.wait_gone(rec, Duration::from_secs(5)) {
            return Ok(());
        }
        // SAFETY: kill has no memory-safety preconditions; the pid was checked to be this VM.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        if self.wait_gone(rec, Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(RuntimeError::Unsupported(format!("VM {} (pid {pid}) did not stop", rec.name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_replies() {
        assert_eq!(qmp_reply(r#"{"QMP": {"version": {}}}"#), None);
        assert_eq!(qmp_reply(r#"{"return": {}}"#), Some(Ok(serde_json::json!({}))));
        assert_eq!(qmp_reply(r#"{"event": "SHUTDOWN"}"#), None);
        assert_eq!(qmp_reply(r#"{"error": {"class": "x", "desc": "nope"}}"#), Some(Err("nope".into())));
    }
}
