//! `mcp adopt <service>`: take over running containers named `<service>-*` that mcp did not
//! create; they keep running and are recorded with the spec they were started with. The next
//! `mcp deploy` of a definition replaces them with labelled containers.

use anyhow::{Context as _, Result};
use clap::Args;

use super::deploy::report;
use super::{Ctx, NodeOpts, OutputOpts};
use crate::proto::{self, ApplyResult, ServiceParams};

#[derive(Debug, Args)]
pub struct Opts {
    pub service: String,
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let node = ctx.service_node(&opts.service, &opts.node)?;
    let mut session = ctx.connect(node).await?;
    let result: ApplyResult = session
        .call(proto::ADOPT, &ServiceParams { service: opts.service.clone() }, &mut ctx.progress())
        .await
        .with_context(|| format!("adopt of {} on node {}", opts.service, node.name))?;
    report(&node.name, &result, opts.output.json, "adopted")
}
