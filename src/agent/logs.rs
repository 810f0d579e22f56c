//! `logs`: what a service's components printed, from the runtime's log processes. Without
//! `follow` components are read one after the other; with it, all at once until the client
//! goes away (`cancel`), and the log processes are killed then.

use std::io::{BufReader, Read};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::status::match_service;
use super::Agent;
use crate::plan::Target;
use crate::proto::{ErrorCode, LogLine, LogsParams, LogsResult, RpcError};

/// How often a quiet follow checks whether the client is still there.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

pub fn logs(agent: &Agent, p: &LogsParams, sink: &mut dyn FnMut(LogLine), cancel: &AtomicBool) -> Result<LogsResult, RpcError> {
    let target = Target { service: p.service.clone(), component: p.component.clone() };
    let record = agent.known(&target)?;
    let observed = agent.observe(Some(&record.name))?;
    let (slots, _) = match_service(&record, &observed);
    let mut sources = Vec::new();
    for s in slots.iter().filter(|s| p.component.as_deref().is_none_or(|c| c == s.want.spec.name)) {
        match s.mine {
            Some(o) => sources.push((s.want.spec.name.clone(), o.id.clone())),
            None if p.component.is_some() => {
                return Err(RpcError::new(
                    ErrorCode::NotFound,
                    format!("{}/{} has no container on this node (see `mcp status {}`)", record.name, s.want.spec.name, record.name),
                ))
            }
            None => {}
        }
    }
    let mut lines = 0u64;
    let mut count = |l: LogLine| {
        lines += 1;
        sink(l)
    };
    if p.follow {
        let children = spawn_all(agent, &sources, p.tail, true)?;
        pump(children, &mut count, cancel);
    } else {
        for source in &sources {
            let children = spawn_all(agent, std::slice::from_ref(source), p.tail, false)?;
            pump(children, &mut count, cancel);
        }
    }
    Ok(LogsResult { lines })
}

fn spawn_all(agent: &Agent, sources: &[(String, String)], tail: Option<u32>, follow: bool) -> Result<Vec<(String, Child)>, RpcError> {
    let mut out: Vec<(String, Child)> = Vec::new();
    for (component, id) in sources {
        match agent.runtime().logs(id, tail, follow) {
            Ok(child) => out.push((component.clone(), child)),
            Err(e) => {
                for (_, mut c) in out {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e.into());
            }
        }
    }
    Ok(out)
}

/// Forward every line of the children's stdout and stderr until they all end or `cancel` is
/// set; then make sure they are gone.
fn pump(mut children: Vec<(String, Child)>, sink: &mut dyn FnMut(LogLine), cancel: &AtomicBool) {
    let (tx, rx) = mpsc::channel::<LogLine>();
    let mut readers = Vec::new();
    for (component, child) in &mut children {
        let pipes: [(&str, Option<Box<dyn Read + Send>>); 2] = [
            ("stdout", child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
            ("stderr", child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        ];
        for (stream, pipe) in pipes {
            let Some(pipe) = pipe else { continue };
            let (tx, component) = (tx.clone(), component.clone());
            readers.push(std::thread::spawn(move || read_lines(pipe, &component, stream, &tx)));
        }
    }
    drop(tx);
    loop {
        match rx.recv_timeout(CANCEL_CHECK) {
            Ok(line) => sink(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if cancel.load(Ordering::SeqCst) {
            break;
        }
    }
    for (_, mut c) in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for r in readers {
        let _ = r.join();
    }
}

/// The longest log line passed on; the rest of a longer one is cut (and says so).
pub const MAX_LOG_LINE: usize = 64 * 1024;

fn read_lines(pipe: Box<dyn Read + Send>, component: &str, stream: &str, tx: &mpsc::Sender<LogLine>) {
    let mut reader = BufReader::new(pipe);
    while let Ok(Some(line)) = crate::proto::lines::read_line_capped(&mut reader, MAX_LOG_LINE) {
        let line = LogLine { component: component.to_string(), stream: stream.to_string(), line };
        if tx.send(line).is_err() {
            return;
        }
    }
}
