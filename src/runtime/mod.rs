//! Runtimes run components. The agent only talks to the [`Runtime`] trait; one module per
//! implementation (`podman` for containers, `qemu` for unikernel VMs, `multi` for both).

pub mod accel;
pub mod address;
pub mod bake;
pub mod child;
pub mod multi;
pub mod podman;
pub mod netns;
pub mod qemu;
pub mod registries;
pub mod registry_client;
mod podman_images;
mod podman_json;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::plan::Component;

pub const LABEL_SERVICE: &str = "mcp.service";
pub const LABEL_COMPONENT: &str = "mcp.component";
pub const LABEL_SPEC: &str = "mcp.spec";
/// The registry digest (`sha256:...`) of the image a container was created from, when the
/// agent knew it (it asked podman while making sure the image was there).
pub const LABEL_DIGEST: &str = "mcp.digest";

/// One runtime object (container or VM) as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub id: String,
    pub name: String,
    /// From the `mcp.service` label (empty for unmanaged objects).
    pub service: String,
    /// From the `mcp.component` label.
    pub component: String,
    /// From the `mcp.spec` label.
    pub spec: Option<String>,
    pub image: String,
    /// `running`, `exited`, `created`, `paused`, ...
    pub state: String,
    /// Unix seconds of the last start, when running.
    pub started_at: Option<i64>,
    pub ports: Vec<String>,
    /// How often the runtime restarted it by itself (crash loops); only from [`Runtime::state`].
    pub restarts: u32,
    /// Exit code of the last run, when it has exited.
    pub exit_code: Option<i32>,
    /// Carries mcp labels. Unmanaged objects are only listed because their name is
    /// `<service>-...`; mcp never changes them unless they were adopted.
    pub managed: bool,
    /// What the object was made with, when the listing says (podman's does; see [`Made`]).
    pub made: Option<Made>,
    /// Its static address (`A.B.C.D/N`), when the agent assigned one (VMs on isolated networks).
    pub address: Option<String>,
    /// The image's registry digest, from the `mcp.digest` label.
    pub digest: Option<String>,
}

/// How a probe reaches an instance at its own address: connect from inside `netns` (an open
/// network namespace file, checked to be one) to `address`.
#[derive(Debug)]
pub struct ProbeRoute {
    pub netns: std::fs::File,
    pub address: std::net::IpAddr,
}

/// What the agent assigned an instance beyond its spec (kept in the registry, stable across
/// redeploys): passed to [`Runtime::create`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// A static address from [`Runtime::address_pool`], `A.B.C.D/N`.
    pub address: Option<String>,
}

/// What a container was created with, as the runtime's listing shows it. Compared with the
/// registry's spec, it catches a container replaced outside mcp under the same labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Made {
    pub command: Vec<String>,
    /// Container-side paths of the volumes.
    pub mounts: Vec<String>,
    /// One entry per published port (ranges expanded).
    pub ports: Vec<Published>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Empty when published on every address.
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

impl Observed {
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// On its way to another state (a stop or a removal in progress): neither running nor
    /// stopped yet, so nothing is decided about it until it gets there.
    pub fn settling(&self) -> bool {
        matches!(self.state.as_str(), "stopping" | "removing")
    }

    /// Does this object run the spec `hash`? Adopted objects carry no mcp label: their
    /// registry hash is `adopted:<id prefix>` and matches by id.
    pub fn runs_spec(&self, hash: &str) -> bool {
        self.spec.as_deref() == Some(hash)
            || hash.strip_prefix(ADOPTED_PREFIX).is_some_and(|id| !id.is_empty() && self.id.starts_with(id))
    }
}

/// The runtime's program: the configured path or name, else `default`, looked up on PATH
/// once and kept in `slot`.
pub fn find_program<'a>(slot: &'a OnceLock<PathBuf>, configured: Option<&Path>, default: &str) -> Result<&'a Path, RuntimeError> {
    if let Some(p) = slot.get() {
        return Ok(p);
    }
    let wanted = configured.unwrap_or(Path::new(default));
    let found = which::which(wanted).map_err(|source| RuntimeError::Missing { program: wanted.display().to_string(), source })?;
    Ok(slot.get_or_init(|| found))
}

/// What [`Runtime::list`] returns, computed from a listing of everything
/// ([`Runtime::list_all`]): mcp-labelled objects (all services), or for one service its
/// labelled objects plus unlabelled ones named `<service>-...`.
pub fn select(all: &[Observed], service: Option<&str>) -> Vec<Observed> {
    match service {
        None => all.iter().filter(|o| o.managed).cloned().collect(),
        Some(s) => {
            let prefix = format!("{s}-");
            scope_to_service(all.iter().filter(|o| o.name.starts_with(&prefix)).cloned().collect(), s)
        }
    }
}

/// From objects named `<service>-*`: those labelled for `service`, and unlabelled ones (named
/// after it, so `service`/`component` are taken from the name). Objects labelled for another
/// service (`a-b-web` when listing `a`) are dropped.
pub fn scope_to_service(found: Vec<Observed>, service: &str) -> Vec<Observed> {
    let prefix = format!("{service}-");
    found
        .into_iter()
        .filter_map(|mut o| {
            if o.managed {
                return (o.service == service).then_some(o);
            }
            let rest = o.name.strip_prefix(&prefix)?.to_string();
            o.service = service.to_string();
            o.component = rest;
            Some(o)
        })
        .collect()
}

/// Something happened to a runtime object (from the runtime's event stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// The object's name.
    pub name: String,
    /// Its `mcp.service` label, if any.
    pub service: Option<String>,
    /// What happened: `died`, `start`, `remove`, ...
    pub action: String,
}

/// Ends an event stream from another thread (its iterator then returns None).
pub type Stopper = Box<dyn Fn() + Send + Sync>;

/// A running follower of the runtime's events. Iterating blocks until the next event and
/// ends when the stream dies or is stopped.
pub trait EventStream: Iterator<Item = RuntimeEvent> + Send {
    /// How a supervisor stops this stream (e.g. on shutdown) while another thread reads it.
    fn stopper(&self) -> Stopper;
}

/// Registry hash of a component adopted from an unlabelled container.
pub const ADOPTED_PREFIX: &str = "adopted:";

/// Failures, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{program} not found on PATH ({source}); install it or set its path in the agent config")]
    Missing { program: String, source: which::Error },
    #[error("could not start `{program} {step}`: {source}")]
    Spawn { program: String, step: String, source: std::io::Error },
    #[error("`{program} {step}` failed (exit {code}): {stderr}")]
    Exit { program: &'static str, step: String, code: i32, stderr: String },
    #[error("`{program} {step}` printed output mcp cannot read: {message}")]
    Output { program: &'static str, step: String, message: String },
    #[error("a container named {name:?} already exists")]
    NameInUse { name: String },
    #[error("network {network:?} does not exist on the node")]
    NetworkMissing { network: String },
    #[error("could not write {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`{program} {step}` did not finish within {secs} s and was killed (hung? the limit is [podman] call_timeout_secs in agent.toml)")]
    Hung { program: &'static str, step: String, secs: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("no {kind} with id {id}")]
    NotFound { kind: &'static str, id: String },
    #[error("pulling {image} from {registry} failed: {cause}")]
    Pull { image: String, registry: String, cause: String },
    #[error("logging in to {registry} failed: {cause}")]
    Login { registry: String, cause: String },
    #[error("asking {registry} what {image} points at failed: {cause}")]
    TagCheck { image: String, registry: String, cause: String },
}

/// An I/O error while `what`, for `map_err`.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// Credentials and trust for image registries on the node (podman).
pub trait Registries {
    /// Check the credentials against the registry and keep them (and the CA, when given,
    /// kept only if the login succeeds). The password reaches podman on stdin only.
    fn login(&self, registry: &str, username: &str, password: &str, ca_pem: Option<&str>) -> Result<(), RuntimeError>;
    /// Forget the credentials (and a CA mcp installed); false when there were none.
    fn logout(&self, registry: &str) -> Result<bool, RuntimeError>;
    /// Registries with credentials, never the secrets.
    fn list(&self) -> Result<Vec<registries::RegistryEntry>, RuntimeError>;
}

/// What a component runs on. Implementations are blocking; the agent calls them off the async
/// executor.
pub trait Runtime: Send + Sync {
    /// Every object carrying mcp labels (all services), or, for one service, its labelled
    /// objects plus unlabelled ones named `<service>-<component>` (`managed: false`).
    /// Same result as [`select`] over [`Runtime::list_all`], usually cheaper.
    fn list(&self, service: Option<&str>) -> Result<Vec<Observed>, RuntimeError>;
    /// Every object, labelled or not (the monitor's sweep).
    fn list_all(&self) -> Result<Vec<Observed>, RuntimeError>;
    /// Follow the runtime's events (until the stream dies).
    fn watch(&self) -> Result<Box<dyn EventStream>, RuntimeError>;
    /// A process printing the object's log (its stdout on stdout, its stderr on stderr): the
    /// last `tail` lines (all when None), then new ones as they come when `follow`.
    fn logs(&self, id: &str, tail: Option<u32>, follow: bool) -> Result<std::process::Child, RuntimeError>;
    /// The object with exactly this name, managed or not.
    fn by_name(&self, name: &str) -> Result<Option<Observed>, RuntimeError>;
    /// The registry hash of a component as this runtime runs it: the spec's hash, plus for
    /// baked VMs the contents of their volume dirs (so a changed file means a new spec).
    fn spec_hash(&self, comp: &Component) -> Result<String, RuntimeError> {
        Ok(crate::plan::spec_hash(comp))
    }
    /// The pool a component's static address comes from, when it needs one that nothing on
    /// its network would hand out (a VM on an isolated bridge); the agent assigns from it.
    fn address_pool(&self, _comp: &Component) -> Option<address::Pool> {
        None
    }
    /// Create and start the component, labelled with its spec hash; returns the new id.
    fn create(&self, service: &str, component: &Component, spec: &str, assigned: &Assigned) -> Result<String, RuntimeError>;
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    fn stop(&self, id: &str) -> Result<(), RuntimeError>;
    fn restart(&self, id: &str) -> Result<(), RuntimeError>;
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    fn rename(&self, id: &str, new_name: &str) -> Result<(), RuntimeError>;
    /// State of one object, restart count included (`None` when it is gone).
    fn state(&self, id: &str) -> Result<Option<Observed>, RuntimeError>;
    /// Every object whose name starts with `prefix`, managed or not (for adopt).
    fn by_name_prefix(&self, prefix: &str) -> Result<Vec<Observed>, RuntimeError>;
    /// What an existing object runs, as a component spec named `component` (for adopt).
    fn describe(&self, id: &str, component: &str) -> Result<Component, RuntimeError>;
    /// The last lines the object printed, for error messages.
    fn tail_logs(&self, id: &str, lines: u32) -> String;
    /// How long a fresh replacement must stay up before the old one is discarded.
    fn settle(&self) -> Duration;
    /// Run `argv` inside the object (a health check's `cmd`), at most `timeout`: `Ok(None)`
    /// when it exited 0, `Ok(Some(why))` when not (its exit status and last output, bounded).
    fn exec_check(&self, _id: &str, _argv: &[String], _timeout: Duration) -> Result<Option<String>, RuntimeError> {
        Err(RuntimeError::Unsupported("this runtime cannot run a command inside what it runs".into()))
    }
    /// Where a health check's `self` is for `id`: the instance's own address and the network
    /// namespace to reach it from (a VM on an isolated network, whose bridge has no address on
    /// the node). `None`: this runtime has no such place for it.
    fn probe_route(&self, _id: &str) -> Result<Option<ProbeRoute>, RuntimeError> {
        Ok(None)
    }
    /// Make what the component needs available before anything is replaced (a container's
    /// image is pulled when missing), reporting progress lines.
    fn prepare(&self, _comp: &Component, _progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Ask where the component's source points now, before its hash is taken (a container
    /// with `pull = "always"` is pulled: a moved tag gives a new hash, so a replace).
    fn resolve(&self, _comp: &Component, _progress: &mut dyn FnMut(String)) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Registry credentials, where this runtime pulls images.
    fn registries(&self) -> Option<&dyn Registries> {
        None
    }
    /// What `image`'s tag points at in its registry now, without pulling (None: the image
    /// comes from no registry).
    fn registry_digest(&self, _image: &str) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }
}
