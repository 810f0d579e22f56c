//! `mcp stop|start|restart <service>[/<component>]`: the three share options and flow
//! (resolve the service's node, call, print); only the method differs.

use anyhow::{Context as _, Result};
use clap::Args;

use super::deploy::report;
use super::{Ctx, NodeOpts, OutputOpts};
use crate::plan::Target;
use crate::proto::ApplyResult;

#[derive(Debug, Args)]
pub struct Opts {
    /// The service, or `service/component`.
    #[arg(value_name = "SERVICE[/COMPONENT]")]
    pub target: String,
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// `method` is `stop`, `start` or `restart`; `verb` is how the result is reported.
pub async fn run(ctx: &Ctx, opts: Opts, method: &str, verb: &str) -> Result<()> {
    let output = &opts.output;
    let target = Target::parse(&opts.target);
    let node = ctx.service_node(&target.service, &opts.node)?;
    let mut session = ctx.connect(node).await?;
    let result: ApplyResult = session
        .call(method, &target, &mut ctx.progress())
        .await
        .with_context(|| format!("{method} of {target} on node {} failed", node.name))?;
    report(&node.name, &result, output.json, verb)
}
