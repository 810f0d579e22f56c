//! The JSON-lines protocol, served on any byte stream: stdin/stdout for a standalone
//! `mcp-agent rpc`, a unix socket connection in the `serve` daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::inflight::InFlight;
use super::Agent;
use crate::plan::PLAN_VERSION;
use crate::proto::lines::{BoundedLines, Line, MAX_PROTOCOL_LINE};
use crate::proto::{self, ErrorCode, HelloParams, HelloResult, LogLine, Progress, Request, Response, RpcError, PROTOCOL_VERSION};

/// How the agent was opened: an error is answered to every request (after hello), so the
/// operator sees why instead of a dead pipe.
pub type AgentSlot = Result<Arc<Agent>, String>;

/// Serve requests from `input` until it closes. Requests of one session run one at a time (off
/// the async executor, streaming progress and log lines while they run); the `serve` daemon
/// runs one such session per connection, concurrently. `daemon` says which of the two answers.
/// When the input closes during a request, the request is told to stop (a followed log ends;
/// a deploy finishes, because stopping half-way would leave the node half-changed).
pub async fn serve<R, W>(agent: AgentSlot, daemon: bool, work: Arc<InFlight>, input: R, mut output: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Bounded: a line longer than any request can be is answered with an error and skipped,
    // never kept (before hello too).
    let mut lines = BoundedLines::new(BufReader::new(input), MAX_PROTOCOL_LINE);
    let mut greeted = false;
    // This session's file transfers: no other session can touch them, and they end with it.
    let transfers = Arc::new(std::sync::Mutex::new(super::files::Transfers::default()));
    let mut pending: Option<Line> = None;
    loop {
        let line = match pending.take() {
            Some(l) => l,
            None => match lines.next_line().await? {
                Some(l) => l,
                None => break,
            },
        };
        let line = match line {
            Line::Text(l) => l,
            Line::TooLong(n) => {
                let err = RpcError::new(
                    ErrorCode::BadRequest,
                    format!("a request line of {n} bytes is longer than the {MAX_PROTOCOL_LINE} bytes a line may have; skipped"),
                );
                write(&mut output, &Response { id: 0, error: Some(err), ..Default::default() }).await?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let err = RpcError::new(ErrorCode::BadRequest, format!("not a request: {e}"));
                write(&mut output, &Response { id: 0, error: Some(err), ..Default::default() }).await?;
                continue;
            }
        };
        let id = req.id;
        if req.method == proto::HELLO {
            let result = hello(&req.params, daemon);
            greeted = result.is_ok();
            write(&mut output, &finish(id, result)).await?;
            continue;
        }
        if !greeted {
            let err = RpcError::new(ErrorCode::BadRequest, "the first request must be hello (protocol handshake)");
            write(&mut output, &finish(id, Err(err))).await?;
            continue;
        }
        let method = req.method.clone();
        // A stopping daemon waits for the requests at work (until their answer is written)
        // and starts no new one. A followed log is not work: it is cut.
        let working = match (method != proto::LOGS).then(|| work.enter()) {
            Some(None) => {
                let err = RpcError::new(
                    ErrorCode::Runtime,
                    format!("mcp-agent is stopping: {method} was not started and nothing was changed; try again once it is back"),
                );
                write(&mut output, &finish(id, Err(err))).await?;
                continue;
            }
            entered => entered.flatten(),
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
        let cancel = Arc::new(AtomicBool::new(false));
        let slot = agent.clone();
        let job_cancel = cancel.clone();
        let job_transfers = transfers.clone();
        let job = tokio::task::spawn_blocking(move || match &slot {
            Ok(a) => {
                let progress_tx = tx.clone();
                let mut progress = |p| {
                    let _ = progress_tx.send(Response { id, progress: Some(p), ..Default::default() });
                };
                let mut log = |l| {
                    let _ = tx.send(Response { id, log: Some(l), ..Default::default() });
                };
                let mut transfers = job_transfers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                dispatch(a, &mut transfers, &req, &mut progress, &mut log, &job_cancel)
            }
            Err(why) => Err(RpcError::new(ErrorCode::Registry, why.clone())),
        });
        let mut input_open = true;
        // The client may be gone (killed, Ctrl-C): its output then fails, but the request runs
        // to its end (a deploy must not stop half-way), and only then does the session end.
        let mut output_error: Option<std::io::Error> = None;
        // A long silent step (a slow stop, a hung call waiting for its deadline) must not look
        // like a dead agent to a client's --timeout: a line now and then while it works. Not
        // for a followed log, whose silence is the log's.
        let started = tokio::time::Instant::now();
        let mut beat = tokio::time::interval_at(started + HEARTBEAT, HEARTBEAT);
        let beats = method_beats(&method);
        loop {
            tokio::select! {
                _ = beat.tick(), if beats && output_error.is_none() => {
                    let message = format!("still working on {method} ({} s)", started.elapsed().as_secs());
                    let m = Response { id, progress: Some(Progress { component: None, message }), ..Default::default() };
                    if let Err(e) = write(&mut output, &m).await {
                        cancel.store(true, Ordering::SeqCst);
                        output_error = Some(e);
                    }
                }
                msg = rx.recv() => match msg {
                    Some(m) => {
                        if output_error.is_none() {
                            if let Err(e) = write(&mut output, &m).await {
                                cancel.store(true, Ordering::SeqCst);
                                output_error = Some(e);
                            }
                        }
                    }
                    None => break,
                },
                next = lines.next_line(), if input_open && pending.is_none() => match next {
                    // Clients wait for the answer before they ask again; a line now (or the
                    // end of input) means: stop what you are streaming.
                    Ok(Some(l)) => {
                        pending = Some(l);
                        cancel.store(true, Ordering::SeqCst);
                    }
                    _ => {
                        input_open = false;
                        cancel.store(true, Ordering::SeqCst);
                    }
                },
            }
        }
        let result = job.await.map_err(std::io::Error::other)?;
        if let Some(e) = output_error {
            return Err(e);
        }
        write(&mut output, &finish(id, result)).await?;
        drop(working);
        if !input_open {
            break;
        }
    }
    Ok(())
}

/// How often a working request says so.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// Requests that say they still work: all but a log (its silence is the log's).
fn method_beats(method: &str) -> bool {
    method != proto::LOGS
}

fn hello(params: &Value, daemon: bool) -> Result<Value, RpcError> {
    let p: HelloParams = params_of(params)?;
    if p.protocol != PROTOCOL_VERSION {
        return Err(RpcError::new(
            ErrorCode::ProtocolMismatch,
            format!(
                "protocol mismatch: the client ({}) speaks protocol {}, this mcp-agent {} speaks {PROTOCOL_VERSION}; \
                 install the same mcp release on both ends",
                p.client,
                p.protocol,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    to_value(HelloResult { protocol: PROTOCOL_VERSION, agent: env!("CARGO_PKG_VERSION").into(), plan_version: PLAN_VERSION, daemon })
}

fn dispatch(
    agent: &Agent,
    transfers: &mut super::files::Transfers,
    req: &Request,
    progress: &mut dyn FnMut(Progress),
    log: &mut dyn FnMut(LogLine),
    cancel: &AtomicBool,
) -> Result<Value, RpcError> {
    match req.method.as_str() {
        proto::DEPLOY => {
            let p: proto::DeployParams = params_of(&req.params).map_err(|e| RpcError { code: ErrorCode::InvalidPlan, ..e })?;
            to_value(agent.deploy(&p.plan, p.component.as_deref(), progress)?)
        }
        proto::PLAN => {
            let p: proto::DeployParams = params_of(&req.params).map_err(|e| RpcError { code: ErrorCode::InvalidPlan, ..e })?;
            to_value(agent.preview(&p.plan, p.component.as_deref())?)
        }
        proto::DEPLOY_MANY => {
            let p: proto::DeployManyParams = params_of(&req.params).map_err(|e| RpcError { code: ErrorCode::InvalidPlan, ..e })?;
            to_value(agent.deploy_many(&p.plans, progress)?)
        }
        proto::PLAN_MANY => {
            let p: proto::PlanManyParams = params_of(&req.params).map_err(|e| RpcError { code: ErrorCode::InvalidPlan, ..e })?;
            to_value(agent.preview_many(&p.plans)?)
        }
        proto::STOP => to_value(agent.set_running(&params_of(&req.params)?, false, progress)?),
        proto::START => to_value(agent.set_running(&params_of(&req.params)?, true, progress)?),
        proto::RESTART => to_value(agent.restart(&params_of(&req.params)?, progress)?),
        proto::LIST => to_value(agent.list()?),
        proto::PS => to_value(agent.ps()?),
        proto::STATUS => to_value(agent.status(&params_of(&req.params)?)?),
        proto::SHOW => {
            let p: proto::ServiceParams = params_of(&req.params)?;
            to_value(agent.show(&p.service)?)
        }
        proto::REMOVE => {
            let p: proto::ServiceParams = params_of(&req.params)?;
            to_value(agent.remove(&p.service, progress)?)
        }
        proto::RECOVER => to_value(agent.recover_node(super::Occasion::Request, progress)?),
        proto::ADOPT => {
            let p: proto::ServiceParams = params_of(&req.params)?;
            to_value(agent.adopt(&p.service, progress)?)
        }
        proto::PUT_BEGIN => to_value(agent.put_begin(transfers, &params_of(&req.params)?)?),
        proto::PUT_CHUNK => {
            let p: proto::PutChunkParams = params_of(&req.params)?;
            to_value(transfers.put_chunk(p.token, &p.data)?)
        }
        proto::PUT_END => {
            let p: proto::PutEndParams = params_of(&req.params)?;
            to_value(transfers.put_end(p.token, &p.sha256)?)
        }
        proto::GET_BEGIN => to_value(agent.get_begin(transfers, &params_of(&req.params)?)?),
        proto::GET_CHUNK => {
            let p: proto::GetChunkParams = params_of(&req.params)?;
            to_value(transfers.get_chunk(p.token, p.offset)?)
        }
        proto::GET_END => {
            let p: proto::GetEndParams = params_of(&req.params)?;
            transfers.end(p.token, p.sha256.as_deref())?;
            to_value(true)
        }
        proto::LOGS => to_value(super::logs::logs(agent, &params_of(&req.params)?, log, cancel)?),
        proto::REGISTRY_LOGIN => to_value(agent.registry_login(&params_of(&req.params)?)?),
        proto::REGISTRY_LOGOUT => {
            let p: proto::RegistryParams = params_of(&req.params)?;
            to_value(agent.registry_logout(&p.registry)?)
        }
        proto::REGISTRY_LIST => to_value(agent.registry_list()?),
        other => Err(RpcError::new(ErrorCode::BadRequest, format!("unknown method {other:?}"))),
    }
}

fn params_of<T: DeserializeOwned>(v: &Value) -> Result<T, RpcError> {
    let v = if v.is_null() { Value::Object(Default::default()) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| RpcError::new(ErrorCode::BadRequest, format!("invalid params: {e}")))
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    Ok(serde_json::to_value(v).expect("results serialize"))
}

fn finish(id: u64, result: Result<Value, RpcError>) -> Response {
    match result {
        Ok(v) => Response { id, result: Some(v), ..Default::default() },
        Err(e) => Response { id, error: Some(e), ..Default::default() },
    }
}

async fn write<W: AsyncWrite + Unpin>(out: &mut W, resp: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).expect("responses serialize");
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await
}
