//! `mcp-agent`: the per-node agent. `mcp-agent rpc` speaks the protocol on stdio (what `mcp`
//! runs, locally or over SSH).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use mcp::agent::config::{default_state_dir, AgentConfig};
use mcp::agent::{rpc, Agent};
use mcp::runtime::podman::Podman;

#[derive(Debug, Parser)]
#[command(name = "mcp-agent", version, about = "The mcp node agent: registry, runtimes, protocol")]
struct Cli {
    #[command(flatten)]
    opts: AgentOpts,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args)]
struct AgentOpts {
    /// State dir: registry, lock, scratch files (default /var/lib/mcp-agent for root, else
    /// $XDG_DATA_HOME/mcp-agent).
    #[arg(long, global = true, env = "MCP_AGENT_STATE", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Agent config file (default <state dir>/agent.toml, if present).
    #[arg(long, global = true, env = "MCP_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The podman binary (default: podman on PATH).
    #[arg(long, global = true, env = "MCP_AGENT_PODMAN", value_name = "PATH")]
    podman: Option<PathBuf>,
    /// A global podman flag, e.g. --podman-arg=--runtime=runc (repeatable; added to the config's).
    #[arg(long = "podman-arg", global = true, value_name = "ARG", allow_hyphen_values = true)]
    podman_args: Vec<String>,
    /// containers.conf for podman (exported as CONTAINERS_CONF).
    #[arg(long, global = true, env = "MCP_AGENT_CONTAINERS_CONF", value_name = "FILE")]
    containers_conf: Option<PathBuf>,
    /// Milliseconds a replacement must stay up before the old container is removed.
    #[arg(long, global = true, env = "MCP_AGENT_SETTLE_MS", value_name = "MS")]
    settle_ms: Option<u64>,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the JSON-lines protocol on stdin/stdout (one client session).
    Rpc,
    /// Print the effective configuration and state dir.
    Config,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    mcp::init_logging(cli.opts.verbose);
    let state_dir = cli.opts.state_dir.clone().unwrap_or_else(default_state_dir);
    let config = load_config(&cli.opts, &state_dir)?;
    match cli.command {
        Cmd::Config => {
            println!("state_dir = {:?}", state_dir.display().to_string());
            print!("{}", toml::to_string(&config).context("rendering config")?);
            Ok(())
        }
        Cmd::Rpc => {
            let runtime = Podman::new(config.podman, state_dir.join("scratch"));
            let agent = Agent::open(&state_dir, Box::new(runtime)).map_err(|e| {
                format!("{e} (state dir {}; set --state-dir or MCP_AGENT_STATE to a writable dir)", state_dir.display())
            });
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
            rt.block_on(rpc::serve(agent, tokio::io::stdin(), tokio::io::stdout())).context("rpc session")
        }
    }
}

fn load_config(opts: &AgentOpts, state_dir: &std::path::Path) -> Result<AgentConfig> {
    let mut config = match &opts.config {
        Some(p) => AgentConfig::load(p, true)?,
        None => AgentConfig::load(&state_dir.join("agent.toml"), false)?,
    };
    if let Some(p) = &opts.podman {
        config.podman.program = Some(p.clone());
    }
    config.podman.args.extend(opts.podman_args.iter().cloned());
    if let Some(c) = &opts.containers_conf {
        config.podman.containers_conf = Some(c.clone());
    }
    if let Some(ms) = opts.settle_ms {
        config.podman.settle_ms = Some(ms);
    }
    Ok(config)
}
