//! `mcp logs <service>[/<component>] [-f] [--tail N]`: what the components printed, through
//! the node's agent. Their stdout goes to stdout and their stderr to stderr; lines are prefixed
//! with the component when several are shown.

use std::io::{IsTerminal, Write};

use anyhow::{Context as _, Result};
use clap::Args;

use super::output::printable;
use super::{Ctx, NodeOpts, OutputOpts};
use crate::plan::Target;
use crate::proto::{self, LogLine, LogsParams, LogsResult};

#[derive(Debug, Args)]
pub struct Opts {
    /// The service, or `service/component`.
    #[arg(value_name = "SERVICE[/COMPONENT]")]
    pub target: String,
    /// Keep printing new lines until interrupted (Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each component.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    #[command(flatten)]
    pub node: NodeOpts,
    /// One JSON object per line ({"component", "stream", "line"}).
    #[command(flatten)]
    pub output: OutputOpts,
    /// Print lines as the container wrote them even to a terminal (by default control
    /// characters such as ESC are shown escaped there: a container must not drive your
    /// terminal). Pipes and files always get them as written.
    #[arg(long)]
    pub raw: bool,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let target = Target::parse(&opts.target);
    let node = ctx.service_node(&target.service, &opts.node)?;
    let mut session = ctx.connect(node).await?;
    if opts.follow {
        session.set_idle_timeout(None);
    }
    let params = LogsParams { service: target.service.clone(), component: target.component.clone(), tail: opts.tail, follow: opts.follow };
    let prefix = target.component.is_none();
    let json = opts.output.json;
    let (tty_out, tty_err) = (std::io::stdout().is_terminal() && !opts.raw, std::io::stderr().is_terminal() && !opts.raw);
    let mut print = move |l: LogLine| {
        let text = if json {
            serde_json::to_string(&l).expect("log lines serialize")
        } else if prefix {
            format!("{} | {}", l.component, l.line)
        } else {
            l.line
        };
        // A closed stdout (e.g. `| head`) ends the command quietly.
        let _ = if l.stream == "stderr" && !json {
            writeln!(std::io::stderr(), "{}", if tty_err { printable(&text, false) } else { text.as_str().into() })
        } else {
            writeln!(std::io::stdout(), "{}", if tty_out { printable(&text, false) } else { text.as_str().into() })
        };
    };
    let _: LogsResult = session
        .call_streaming(proto::LOGS, &params, &mut |_| {}, &mut print)
        .await
        .with_context(|| format!("logs of {target} on node {}", node.name))?;
    Ok(())
}
