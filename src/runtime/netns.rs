//! Work done inside another network namespace, on a thread of its own.

use std::os::fd::AsFd;

/// Run `f` on a short-lived thread (`name`) inside the network namespace `ns`, and hand back
/// what it returns: no other thread ever changes namespace. What `f` makes there stays there
/// (a socket belongs to the namespace it was made in; /proc/sys/net is the opener's).
pub fn in_netns<T: Send + 'static>(ns: &std::fs::File, name: &str, f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    let ns = ns.try_clone().map_err(|e| format!("the network namespace: {e}"))?;
    let inside = move || {
        rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
            .map_err(|e| format!("entering the network namespace: {e}"))?;
        f()
    };
    let thread = std::thread::Builder::new().name(name.into()).spawn(inside).map_err(|e| format!("starting a thread: {e}"))?;
    thread.join().unwrap_or_else(|_| Err(format!("the {name} thread panicked")))
}
