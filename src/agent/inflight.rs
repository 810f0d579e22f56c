//! The requests a daemon is working on: a stopping daemon lets them finish (within a bound)
//! before it gives up its lock, and starts no new one meanwhile. A deploy cut short by a stop
//! is recoverable; one that finishes is better, and one still running after the daemon gave
//! up its lock would share the node with the next daemon.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct InFlight {
    state: Mutex<State>,
    idle: Condvar,
}

#[derive(Default)]
struct State {
    running: usize,
    stopping: bool,
}

/// One request at work; it is done when this drops.
pub struct Working(Arc<InFlight>);

impl Drop for Working {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running -= 1;
        self.0.idle.notify_all();
    }
}

impl InFlight {
    /// A request begins; None once the daemon is stopping.
    pub fn enter(self: &Arc<Self>) -> Option<Working> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.stopping {
            return None;
        }
        s.running += 1;
        Some(Working(self.clone()))
    }

    /// From now on, refuse new requests.
    pub fn refuse(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stopping = true;
    }

    /// Refuse new requests, then wait at most `limit` for those at work; how many still run.
    pub fn stop(&self, limit: Duration) -> usize {
        let end = Instant::now() + limit;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.stopping = true;
        while s.running > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self.idle.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        s.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_waits_for_the_requests_at_work_and_refuses_new_ones() {
        let work = Arc::new(InFlight::default());
        let busy = work.enter().expect("not stopping");
        let w = work.clone();
        let stopper = std::thread::spawn(move || w.stop(Duration::from_secs(30)));
        // The stop has begun once new requests are refused.
        while let Some(w) = work.enter() {
            drop(w);
            std::thread::yield_now();
        }
        assert!(!stopper.is_finished(), "waits for the request at work");
        drop(busy);
        assert_eq!(stopper.join().unwrap(), 0);
        // Bounded: a request that never ends is left behind.
        let work = Arc::new(InFlight::default());
        let _stuck = work.enter().unwrap();
        assert_eq!(work.stop(Duration::from_millis(50)), 1);
    }
}
