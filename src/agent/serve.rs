//! `mcp-agent serve`: the long-running daemon. It owns the registry, runs the monitor and the
//! alert hook, and serves the protocol on a unix socket in the state dir (mode 0660 inside the
//! 0700 state dir), one session per connection, concurrently. `mcp-agent rpc` forwards its
//! stdio to this socket when the daemon runs, and serves alone when it does not.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use super::alert::{AlertConfig, Alerter};
use super::monitor::{self, Monitor, MonitorConfig, ObservedCache, RetentionConfig, Trigger};
use super::inflight::InFlight;
use super::{rpc, Agent};

pub const SOCKET_FILE: &str = "agent.sock";
const SERVE_LOCK: &str = "serve.lock";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another `mcp-agent serve` is running for state dir {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// What the daemon runs besides the socket.
pub struct Daemon {
    pub monitor: MonitorConfig,
    pub retention: RetentionConfig,
    pub alert: AlertConfig,
}

/// Run until SIGTERM or SIGINT. `agent` must carry `cache` (see [`Agent::with_cache`]).
pub async fn run(agent: Arc<Agent>, cache: Arc<ObservedCache>, daemon: Daemon) -> Result<(), ServeError> {
    let state_dir = agent.state_dir().to_path_buf();
    fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ServeError + 'p {
        move |source| ServeError::Io { what, path: path.to_path_buf(), source }
    }
    let lock_path = state_dir.join(SERVE_LOCK);
    let lock = std::fs::File::create(&lock_path).map_err(io("create", &lock_path))?;
    if lock.try_lock().is_err() {
        return Err(ServeError::AlreadyRunning(state_dir));
    }
    let socket = socket_path(&state_dir);
    // We hold the serve lock: a socket file left here is from a daemon that died.
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove stale socket", &socket)(e)),
        _ => {}
    }
    let alerts = Alerter::new(&daemon.alert).map(|a| {
        let (tx, handle) = a.start(agent.clone());
        agent.registry().set_event_sink(Box::new(move |events| {
            for e in events {
                let _ = tx.send(e.clone());
            }
        }));
        handle
    });

    // The monitor's first look recovers what the node lost while no daemon ran (a reboot, a
    // lost podman database: see monitor::repair_for). The socket answers once it is done (or
    // after BOOT_WAIT, if podman is slow or hung): a change made through the daemon is then
    // never taken for a loss. Requests meanwhile are served by `mcp-agent rpc` alone.
    let (tx, rx) = mpsc::channel::<Trigger>();
    let (booted, boot_done) = mpsc::channel::<()>();
    let monitor = Monitor::new(agent.clone(), cache.clone(), &daemon.monitor, &daemon.retention);
    let monitor = std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || monitor.run(rx, Some(booted)))
        .map_err(io("start the monitor for", &state_dir))?;
    let waited = tokio::task::spawn_blocking(move || boot_done.recv_timeout(BOOT_WAIT).is_ok()).await.unwrap_or(false);
    if !waited {
        tracing::warn!("the first look at every service takes more than {}s; serving meanwhile", BOOT_WAIT.as_secs());
    }
    let listener = UnixListener::bind(&socket).map_err(io("listen on", &socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).map_err(io("set the mode of", &socket))?;

    let current: monitor::StopSlot = Default::default();
    let work = Arc::new(InFlight::default());
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (agent, cache, tx, pid, stop) = (agent.clone(), cache.clone(), tx.clone(), current.clone(), stop.clone());
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || monitor::follow(agent, cache, tx, pid, stop))
            .map_err(io("start the event follower for", &state_dir))?
    };
    let (health_stop, health_stopped) = mpsc::channel::<()>();
    let health = {
        let (agent, tx) = (agent.clone(), tx.clone());
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || super::health::watch(agent, tx, health_stopped))
            .map_err(io("start the health watch for", &state_dir))?
    };
    tracing::info!(socket = %socket.display(), "mcp-agent serve: listening");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io("handle signals for", &state_dir))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(io("handle signals for", &state_dir))?;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let (agent, work) = (agent.clone(), work.clone());
                    tokio::spawn(async move {
                        let (r, w) = stream.into_split();
                        if let Err(e) = rpc::serve(Ok(agent), true, work, r, w).await {
                            tracing::debug!(error = %e, "session ended");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("mcp-agent serve: stopping");
    let _ = std::fs::remove_file(&socket);
    // No new request from here on. The lock stays ours until the requests at work are done: a
    // deploy the stop came in the middle of finishes (and is recorded) before another daemon
    // may start on this node.
    // A second signal cuts the wait short.
    work.refuse();
    let waiting = tokio::task::spawn_blocking(move || work.stop(REQUEST_GRACE));
    let again = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let all_done = tokio::select! {
        left = waiting => match left.unwrap_or(0) {
            0 => true,
            left => {
                tracing::warn!(
                    "{left} request(s) still at work {}s after the stop; exiting anyway (the next start recovers what they left half-way)",
                    REQUEST_GRACE.as_secs()
                );
                false
            }
        },
        _ = again => {
            tracing::warn!("stopped again: not waiting for the requests at work (the next start recovers what they left half-way)");
            false
        }
    };
    stop.store(true, Ordering::SeqCst);
    let _ = tx.send(Trigger::Stop);
    if let Some(stop_stream) = current.lock().unwrap_or_else(|p| p.into_inner()).take() {
        stop_stream();
    }
    drop(tx);
    drop(health_stop);
    // Bounded: a thread stuck in a runtime call (each has its own deadline) is left behind;
    // its children die with the process.
    if !join_within(vec![health, monitor, follower], SHUTDOWN_GRACE) {
        tracing::warn!("the monitor is still busy {}s after the stop (a slow or hung podman call?); exiting anyway", SHUTDOWN_GRACE.as_secs());
    }
    drop(alerts);
    if all_done {
        drop(lock);
    } else {
        // Requests still at work run until the process exits: the lock goes with it, not before.
        std::mem::forget(lock);
    }
    Ok(())
}

/// How long a starting daemon waits for its first look (recovery) before it serves anyway.
const BOOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping daemon waits for the requests it is working on (a deploy's podman calls
/// each have their own deadline; this bounds the stop as a whole).
const REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a stopping daemon waits for its monitor, event follower and health watch.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Join `threads`, waiting at most `limit` for all of them; false when some still run.
fn join_within(threads: Vec<std::thread::JoinHandle<()>>, limit: std::time::Duration) -> bool {
    let (done, joined) = mpsc::channel();
    std::thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
        let _ = done.send(());
    });
    joined.recv_timeout(limit).is_ok()
}

/// The daemon's socket, if a daemon answers on it.
pub fn connect(state_dir: &Path) -> Option<std::os::unix::net::UnixStream> {
    match std::os::unix::net::UnixStream::connect(socket_path(state_dir)) {
        Ok(s) => Some(s),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the mcp-agent daemon; serving this session alone");
            None
        }
    }
}

/// `mcp-agent rpc` with a daemon: copy stdin to the socket and the socket to stdout. When
/// stdin ends the socket's write side is shut so the daemon finishes and closes.
pub async fn forward(stream: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    let stream = UnixStream::from_std(stream)?;
    let (mut from_daemon, mut to_daemon) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        tokio::io::copy(&mut stdin, &mut to_daemon).await?;
        to_daemon.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut from_daemon, &mut stdout).await?;
        stdout.flush().await
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => r,
        r = &mut up => {
            r?;
            down.await
        }
    }
}
