//! `mcp-agent`: the per-node agent. `mcp-agent rpc` speaks the protocol on stdio (what `mcp`
//! runs, locally or over SSH).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use std::sync::Arc;

use mcp::agent::config::{default_state_dir, AgentConfig};
use mcp::agent::monitor::ObservedCache;
use mcp::agent::{rpc, serve, Agent};
use mcp::runtime::multi::Runtimes;
use mcp::runtime::podman::{Podman, DEFAULT_SETTLE_MS};
use mcp::runtime::qemu::Qemu;

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
    /// The qemu-system-x86_64 binary for unikernels (default: on PATH).
    #[arg(long, global = true, env = "MCP_AGENT_QEMU", value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Seconds between the daemon's full sweeps (default 30; events trigger sweeps between).
    #[arg(long, global = true, env = "MCP_AGENT_SWEEP_SECS", value_name = "SECS")]
    sweep_secs: Option<u64>,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the JSON-lines protocol on stdin/stdout (one client session). Forwards to the
    /// `serve` daemon when it runs; works alone when it does not.
    Rpc,
    /// Run the daemon: registry owner, drift monitor (podman events + periodic sweeps),
    /// restart policy, alert hook, protocol on <state dir>/agent.sock. Stops on SIGTERM.
    Serve,
    /// Print the effective configuration and state dir.
    Config,
    /// Build a Nanos disk image from one program-form component, exactly as a deploy does
    /// (what the flake's lib.mkNanosImage runs). Touches no state dir.
    BuildImage(BuildImageOpts),
}

#[derive(Debug, Args)]
struct BuildImageOpts {
    /// JSON of one plan component: kind "unikernel", program, cmd, env, volumes
    /// ("HOST:GUEST", baked). The environment ends up in the image.
    #[arg(long, value_name = "FILE")]
    component: PathBuf,
    /// The image to write (mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The Nanos toolchain (kernel.img, boot.img, mkfs); default: [nanos] dir of the config.
    #[arg(long, value_name = "DIR")]
    nanos_dir: Option<PathBuf>,
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
            if let Some(kept) = mcp::runtime::accel::kept_verdict(&state_dir) {
                println!("\n# VMs get -accel {}: {}", kept.accel, kept.why);
            }
            match config.nanos.toolchain() {
                Ok(t) => println!("# Nanos toolchain: {} (kernel.img, boot.img, mkfs)", t.dir.display()),
                Err(why) => println!("# Nanos toolchain: none; program-form unikernels cannot be built: {why}"),
            }
            Ok(())
        }
        Cmd::BuildImage(opts) => build_image(&config, opts),
        Cmd::Rpc => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
            let result = match serve::connect(&state_dir) {
                Some(socket) => rt.block_on(serve::forward(socket)).context("forwarding to the mcp-agent daemon"),
                None => {
                    let agent = open_agent(&config, &state_dir).map(Arc::new).map_err(|e| e.to_string());
                    rt.block_on(rpc::serve(agent, false, Default::default(), tokio::io::stdin(), tokio::io::stdout())).context("rpc session")
                }
            };
            // tokio's stdin reader is a blocking thread that may still wait for input.
            rt.shutdown_background();
            result
        }
        Cmd::Serve => {
            let cache = Arc::new(ObservedCache::default());
            let agent = Arc::new(open_agent(&config, &state_dir)?.with_cache(cache.clone()));
            let daemon = serve::Daemon { monitor: config.monitor, retention: config.events, alert: config.alert };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting tokio")?;
            let result = rt.block_on(serve::run(agent, cache, daemon)).context("mcp-agent serve");
            // serve::run waited for the requests at work (bounded); what is left is cut short.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
    }
}

fn build_image(config: &AgentConfig, opts: BuildImageOpts) -> Result<()> {
    use mcp::plan::{validate, Component, Plan, PLAN_VERSION};
    use mcp::runtime::qemu::{nanos_image, Form};
    let text = std::fs::read(&opts.component).with_context(|| format!("reading {}", opts.component.display()))?;
    anyhow::ensure!(text.len() <= 1 << 20, "{} is larger than 1 MiB; a component is a few lines of JSON", opts.component.display());
    let comp: Component = serde_json::from_slice(&text).with_context(|| format!("{} is not a plan component", opts.component.display()))?;
    let plan = Plan { version: PLAN_VERSION, name: "image".into(), node: None, active: true, components: vec![comp.clone()] };
    if let Err(errors) = validate(&plan, &opts.component.display().to_string()) {
        eprintln!("{errors}");
        std::process::exit(2);
    }
    anyhow::ensure!(
        Form::of(&comp, true) == Form::Nanos,
        "{}: build-image builds a Nanos image from a program: expected kind = \"unikernel\" with program = \"/path/to/elf\"",
        opts.component.display()
    );
    let mut nanos = config.nanos.clone();
    if let Some(dir) = opts.nanos_dir {
        nanos.dir = Some(dir);
    }
    let parent = opts.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let scratch = tempfile::Builder::new().prefix(".mcp-build-image").tempdir_in(parent).with_context(|| format!("a scratch dir in {}", parent.display()))?;
    nanos_image(&comp, nanos.toolchain(), &scratch.path().join("staging"), &opts.out, None, nanos.mkfs_timeout())?;
    Ok(())
}

fn open_agent(config: &AgentConfig, state_dir: &std::path::Path) -> Result<Agent> {
    let settle = std::time::Duration::from_millis(config.podman.settle_ms.unwrap_or(DEFAULT_SETTLE_MS));
    let runtime = Runtimes {
        containers: Box::new(Podman::new(config.podman.clone(), state_dir.join("scratch"))),
        vms: Qemu::new(config.qemu.clone(), config.nanos.clone(), state_dir, settle).map_err(anyhow::Error::msg)?,
    };
    match Agent::open(state_dir, Box::new(runtime)) {
        Ok(agent) => Ok(agent.with_policy(config.policy.clone()).with_boot(config.boot.clone())),
        Err(e) => {
            let remedy = e.remedy(&state_dir.join(mcp::agent::REGISTRY_FILE));
            Err(anyhow::Error::new(e).context(format!("opening the agent's registry (state dir {}): {remedy}", state_dir.display())))
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
    if let Some(q) = &opts.qemu {
        config.qemu.program = Some(q.clone());
    }
    if let Some(s) = opts.sweep_secs {
        config.monitor.sweep_secs = Some(s);
    }
    // Registry credentials live with the rest of the node's state (not under
    // $XDG_RUNTIME_DIR, which a reboot empties).
    config.podman.auth_file.get_or_insert_with(|| state_dir.join("registries/auth.json"));
    Ok(config)
}
