//! The `mcp` command line. One module per subcommand, each exposing `Opts` and
//! `run(ctx, opts)`; option groups shared by several commands are flattened in.

pub mod adopt;
pub mod build;
pub mod config;
pub mod deploy;
pub mod lifecycle;
pub mod list;
pub mod login;
pub mod logs;
pub mod node;
pub mod output;
pub mod plan;
pub mod ps;
pub mod pull;
pub mod push;
pub mod recover;
pub mod registry;
pub mod service;
pub mod status;
pub mod sync;
pub mod undeploy;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::plan::{load_service_file, LoadError, Plan, PlanErrors, Target};
use crate::proto::{self, ErrorCode, Progress};
use crate::transport::local::LocalTransport;
use crate::transport::ssh::{SshOptions, SshTransport};
use crate::transport::{CallError, Session, Transport, TransportError};
use config::{Config, NodeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "mcp",
    version,
    about = "Deploy services to nodes as podman containers, and keep track of them",
    after_help = "Exit codes: 0 ok, 1 the operation failed (previous state kept), 2 invalid input \
                  (usage, service definition, config), 3 node or agent unreachable or incompatible, \
                  4 no such service or component, 5 `mcp plan`: changes are pending."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Config file (default: $XDG_CONFIG_HOME/mcp/mcp.toml or ~/.config/mcp/mcp.toml).
    #[arg(long, global = true, env = "MCP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not print progress.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Seconds to connect to an SSH node (TCP, handshake, authentication).
    #[arg(long, global = true, env = "MCP_CONNECT_TIMEOUT", default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds of silence from a node's agent before a request is given up.
    #[arg(long, global = true, env = "MCP_TIMEOUT", default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a service (or one component) from its definition.
    Deploy(deploy::Opts),
    /// Tear a service down on its node (containers, VMs, assigned ports, registry entry);
    /// its data dirs are kept.
    Undeploy(undeploy::Opts),
    /// Build the service's [build.images] with podman from the [build] workspace, and push
    /// them where its components pull from.
    Build(build::Opts),
    /// What a deploy would do on the node (exit 5 when changes are pending); --offline: the plan JSON.
    Plan(plan::Opts),
    /// Stop all components of a service (or one); the definition is kept.
    Stop(lifecycle::Opts),
    /// Start all components of a service (or one).
    Start(lifecycle::Opts),
    /// Restart all components of a service (or one).
    Restart(lifecycle::Opts),
    /// List services from the nodes' registries.
    List(list::Opts),
    /// Live view of the containers on the nodes, with uptime.
    Ps(ps::Opts),
    /// Desired vs observed state, drift, repairs and recent events.
    Status(status::Opts),
    /// Show what a service's components printed (-f to follow).
    Logs(logs::Opts),
    /// Check every node (or one): show and record SSH host keys, check the agent answers.
    Login(login::Opts),
    /// List, add and remove nodes in mcp.toml.
    #[command(subcommand)]
    Node(node::Cmd),
    /// Deploy every definition in the services dir to its node (--prune removes the undefined).
    Sync(sync::Opts),
    /// Show, edit or export one service's definition.
    #[command(subcommand)]
    Service(service::Cmd),
    /// Take over running containers named <service>-* that mcp did not create.
    Adopt(adopt::Opts),
    /// Bring every service back as the node's registry holds it (after the node lost its
    /// containers): missing ones recreated, exited ones started, whatever the restart policy,
    /// in the boot order of the node's agent.toml ([[boot.sequence]]).
    Recover(recover::Opts),
    /// Copy a file into a service's volume dir on its node.
    Push(push::Opts),
    /// Copy a file out of a service's volume dir on its node.
    Pull(pull::Opts),
    /// Image registry credentials on the nodes: login, logout, list.
    #[command(subcommand)]
    Registry(registry::Cmd),
}

/// `--json` for commands that read.
#[derive(Debug, Clone, Args)]
pub struct OutputOpts {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--node` for commands that act on a service already deployed.
#[derive(Debug, Clone, Args)]
pub struct NodeOpts {
    /// The node to talk to (default: the node in the service's definition, or the only node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

pub struct Ctx {
    pub config: Config,
    pub quiet: bool,
    pub ssh: SshOptions,
}

pub async fn run(cli: Cli) -> Result<()> {
    let config = Config::discover(cli.global.config.as_deref())?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let mut ssh = SshOptions::for_user();
    ssh.connect_timeout = std::time::Duration::from_secs(cli.global.connect_timeout);
    ssh.request_timeout = std::time::Duration::from_secs(cli.global.timeout);
    let ctx = Ctx { config, quiet: cli.global.quiet, ssh };
    match cli.command {
        Command::Deploy(o) => deploy::run(&ctx, o).await,
        Command::Plan(o) => plan::run(&ctx, o).await,
        Command::Stop(o) => lifecycle::run(&ctx, o, proto::STOP, "stopped").await,
        Command::Start(o) => lifecycle::run(&ctx, o, proto::START, "started").await,
        Command::Restart(o) => lifecycle::run(&ctx, o, proto::RESTART, "restarted").await,
        Command::List(o) => list::run(&ctx, o).await,
        Command::Ps(o) => ps::run(&ctx, o).await,
        Command::Logs(o) => logs::run(&ctx, o).await,
        Command::Status(o) => status::run(&ctx, o).await,
        Command::Login(o) => login::run(&ctx, o).await,
        Command::Node(c) => node::run(&ctx, c).await,
        Command::Sync(o) => sync::run(&ctx, o).await,
        Command::Service(c) => service::run(&ctx, c).await,
        Command::Adopt(o) => adopt::run(&ctx, o).await,
        Command::Recover(o) => recover::run(&ctx, o).await,
        Command::Undeploy(o) => undeploy::run(&ctx, o).await,
        Command::Build(o) => build::run(&ctx, o).await,
        Command::Push(o) => push::run(&ctx, o).await,
        Command::Pull(o) => pull::run(&ctx, o).await,
        Command::Registry(c) => registry::run(&ctx, c).await,
    }
}

impl Ctx {
    pub fn transport(&self, node: &NodeConfig) -> Result<Box<dyn Transport>, TransportError> {
        if node.is_local() {
            let local = LocalTransport::new(&node.name, node.agent.as_deref())?;
            return Ok(Box::new(local.with_timeouts(self.ssh.connect_timeout, self.ssh.request_timeout)));
        }
        Ok(Box::new(SshTransport::new(node, self.ssh.clone())?))
    }

    pub async fn connect(&self, node: &NodeConfig) -> Result<Session, TransportError> {
        self.transport(node)?.open().await
    }

    /// Prints progress on stderr unless `--quiet`.
    pub fn progress(&self) -> impl FnMut(Progress) + Send + 'static {
        progress_printer(self.quiet)
    }

    /// A definition file for `arg`: a path to a file, or a name in the services dir.
    /// Returns the file and the component named after `/`, if any.
    pub fn definition_path(&self, arg: &str) -> (PathBuf, Option<String>) {
        let as_path = Path::new(arg);
        if arg.ends_with(".toml") || arg.ends_with(".nix") || as_path.is_file() {
            return (as_path.to_path_buf(), None);
        }
        let t = Target::parse(arg);
        (self.service_file(&t.service), t.component)
    }

    /// `<services dir>/<service>.toml`, or `.nix` when only that exists.
    pub fn service_file(&self, service: &str) -> PathBuf {
        let toml = self.config.services_dir.join(format!("{service}.toml"));
        let nix = self.config.services_dir.join(format!("{service}.nix"));
        if !toml.exists() && nix.exists() {
            nix
        } else {
            toml
        }
    }

    /// Load and validate the definition for `arg`.
    pub fn load_definition(&self, arg: &str) -> Result<(Plan, PathBuf, Option<String>)> {
        let (path, component) = self.definition_path(arg);
        if !path.exists() {
            bail!(
                "no service definition for {arg:?}: neither {} nor .nix exists (services dir {} from {})",
                path.display(),
                self.config.services_dir.display(),
                self.config.origin()
            );
        }
        let plan = load_service_file(&path)?;
        Ok((plan, path, component))
    }

    /// The node named `name`, or an error that says where nodes are configured.
    pub fn node(&self, name: &str) -> Result<&NodeConfig> {
        self.config.node(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.nodes.iter().map(|n| n.name.as_str()).collect();
            anyhow!(NotFound(format!(
                "node {name:?} is not configured in {} (known: {})",
                self.config.origin(),
                known.join(", ")
            )))
        })
    }

    /// `--node N`'s node, or every configured node.
    pub fn nodes_or_all(&self, only: Option<&str>) -> Result<Vec<&NodeConfig>> {
        Ok(match only {
            Some(n) => vec![self.node(n)?],
            None => self.config.nodes.iter().collect(),
        })
    }

    /// The node a plan goes to: its `node` field, or the only configured node.
    pub fn plan_node(&self, plan: &Plan) -> Result<&NodeConfig> {
        match &plan.node {
            Some(n) => self.node(n),
            None => self.only_node().with_context(|| format!("service {} names no node", plan.name)),
        }
    }

    fn only_node(&self) -> Result<&NodeConfig> {
        match self.config.nodes.as_slice() {
            [one] => Ok(one),
            _ => bail!("several nodes are configured in {}; say which with --node NAME", self.config.origin()),
        }
    }

    /// The node holding `service`: `--node`, else its definition's node, else the only node.
    pub fn service_node(&self, service: &str, opts: &NodeOpts) -> Result<&NodeConfig> {
        if let Some(n) = &opts.node {
            return self.node(n);
        }
        let path = self.service_file(service);
        if path.exists() {
            let plan = load_service_file(&path)?;
            return self.plan_node(&plan);
        }
        self.only_node()
    }

    /// Run `f` against every configured node at once; one result per node, in config order.
    pub async fn each_node<T, F, Fut>(&self, f: F) -> Vec<NodeResult<T>>
    where
        T: Send + 'static,
        F: Fn(Session) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<T, CallError>> + Send + 'static,
    {
        self.each_of(self.config.nodes.iter().collect(), f).await
    }

    /// Run `f` against `nodes` at once; one result per node, in the given order.
    pub async fn each_of<T, F, Fut>(&self, nodes: Vec<&NodeConfig>, f: F) -> Vec<NodeResult<T>>
    where
        T: Send + 'static,
        F: Fn(Session) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let mut set = JoinSet::new();
        for (i, node) in nodes.into_iter().enumerate() {
            let name = node.name.clone();
            let transport = self.transport(node);
            let f = f.clone();
            set.spawn(async move {
                let result = match transport {
                    Ok(t) => match t.open().await {
                        Ok(session) => f(session).await.map_err(anyhow::Error::from),
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e.into()),
                };
                (i, NodeResult::new(name, result))
            });
        }
        let mut out: Vec<(usize, NodeResult<T>)> = set.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }
}

/// Prints progress on stderr unless `quiet`.
pub fn progress_printer(quiet: bool) -> impl FnMut(Progress) + Send + 'static {
    let tty = std::io::stderr().is_terminal();
    move |p: Progress| {
        if quiet {
            return;
        }
        let who = p.component.map(|c| format!("[{c}] ")).unwrap_or_default();
        let line = output::printable(&format!("{who}{}", p.message), false).into_owned();
        if tty {
            eprintln!("\x1b[2m  {line}\x1b[0m");
        } else {
            eprintln!("  {line}");
        }
    }
}

/// One node's answer in a fan-out: `result` or `error`.
#[derive(Debug, Serialize)]
pub struct NodeResult<T> {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit code the error stands for (see [`exit_code`]).
    #[serde(skip)]
    pub code: i32,
}

impl<T> NodeResult<T> {
    pub fn new(node: String, r: Result<T, anyhow::Error>) -> Self {
        match r {
            Ok(v) => NodeResult { node, result: Some(v), error: None, code: 0 },
            Err(e) => NodeResult { node, result: None, error: Some(format!("{e:#}")), code: exit_code(&e) },
        }
    }
}

/// `mcp plan` found changes a deploy would make (exit code 5; nothing is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{0} change(s) pending")]
pub struct PendingChanges(pub usize);

/// Input the operator must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// A missing service, component or node (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Print `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Exit code for an error, by what it is (see `mcp --help`).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<PlanErrors>().is_some()
            || cause.downcast_ref::<LoadError>().is_some()
            || cause.downcast_ref::<config::ConfigError>().is_some()
        {
            return 2;
        }
        if cause.downcast_ref::<InvalidInput>().is_some() {
            return 2;
        }
        if cause.downcast_ref::<NotFound>().is_some() {
            return 4;
        }
        if cause.downcast_ref::<PendingChanges>().is_some() {
            return 5;
        }
        if let Some(f) = cause.downcast_ref::<NodeFailures>() {
            return f.code;
        }
        if let Some(t) = cause.downcast_ref::<TransportError>() {
            return match t {
                TransportError::Handshake { error, .. } if error.code != ErrorCode::ProtocolMismatch => 1,
                TransportError::Config { .. } => 2,
                _ => 3,
            };
        }
        if let Some(c) = cause.downcast_ref::<CallError>() {
            return match c {
                CallError::Transport(_) => 3,
                CallError::Agent(e) => match e.code {
                    ErrorCode::InvalidPlan | ErrorCode::BadRequest => 2,
                    ErrorCode::NotFound => 4,
                    ErrorCode::ProtocolMismatch => 3,
                    ErrorCode::RolledBack | ErrorCode::Runtime | ErrorCode::Registry | ErrorCode::Conflict => 1,
                },
            };
        }
    }
    1
}

/// Failed nodes in a fan-out: said on stderr after the others were reported, and the command
/// fails with the most serious of their exit codes.
pub fn report_failures<T>(results: &[NodeResult<T>]) -> Result<()> {
    let failed: Vec<&NodeResult<T>> = results.iter().filter(|r| r.error.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for f in &failed {
        eprintln!("error: node {}: {}", f.node, output::printable(f.error.as_deref().unwrap_or_default(), true));
    }
    let code = failed.iter().map(|f| f.code).max().unwrap_or(1);
    Err(NodeFailures { count: failed.len(), code }.into())
}

/// Some nodes of a fan-out failed.
#[derive(Debug, thiserror::Error)]
#[error("{count} node(s) failed")]
pub struct NodeFailures {
    pub count: usize,
    pub code: i32,
}
