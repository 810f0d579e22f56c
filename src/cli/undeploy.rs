//! `mcp undeploy <service>`: tear a service down on its node: every container and VM of it,
//! the ports and addresses the agent assigned it, and its registry entry. Its data dirs (the
//! volumes' host dirs) are kept. The definition file is left alone too.

use anyhow::{Context as _, Result};
use clap::Args;

use super::deploy::report;
use super::{Ctx, NodeOpts, OutputOpts};
use crate::proto::{self, ApplyResult, ServiceParams};

#[derive(Debug, Args)]
pub struct Opts {
    /// The service.
    pub service: String,
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let node = ctx.service_node(&opts.service, &opts.node)?;
    let mut session = ctx.connect(node).await?;
    let params = ServiceParams { service: opts.service.clone() };
    let result: ApplyResult = session
        .call(proto::REMOVE, &params, &mut ctx.progress())
        .await
        .with_context(|| format!("undeploy of {} on node {} failed", opts.service, node.name))?;
    report(&node.name, &result, opts.output.json, "undeployed (data dirs kept)")
}
