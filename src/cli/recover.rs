//! `mcp recover [--node N]`: bring every service back on the node(s) as their registries hold
//! them, after the node lost its containers (a lost podman database, a reboot): missing
//! components recreated, exited ones started, whatever their restart policy; nothing else
//! changes. No definition files needed.

use anyhow::Result;
use clap::Args;

use super::{print_json, report_failures, Ctx, NodeOpts, NodeResult, OutputOpts};
use crate::proto::{self, ChangeKind, RecoverResult};

#[derive(Debug, Args)]
pub struct Opts {
    /// Only this node (default: every node).
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let quiet = ctx.quiet;
    let call = move |mut s: crate::transport::Session| {
        let mut progress = super::progress_printer(quiet);
        async move { s.call::<_, RecoverResult>(proto::RECOVER, &serde_json::json!({}), &mut progress).await }
    };
    let results: Vec<NodeResult<RecoverResult>> = match &opts.node.node {
        Some(name) => ctx.each_of(vec![ctx.node(name)?], call).await,
        None => ctx.each_node(call).await,
    };
    let failed_services = results.iter().flat_map(|r| r.result.iter()).flat_map(|r| &r.services).filter(|s| s.error.is_some()).count();
    if opts.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
    } else {
        for r in &results {
            // Stages are worth a line each only when agent.toml names some.
            let staged = r.result.iter().flat_map(|r| &r.stages).any(|s| s.name != proto::REST_STAGE);
            for stage in r.result.iter().flat_map(|r| &r.stages).filter(|_| staged) {
                let why = stage.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                let required = if stage.required { "required" } else { "optional" };
                let took = stage.elapsed_ms as f64 / 1000.0;
                println!("{}: stage {} ({required}): {} after {took:.1}s{why}", r.node, stage.name, stage.state.as_str());
            }
            for s in r.result.iter().flat_map(|r| &r.services) {
                let done: Vec<String> = s
                    .changes
                    .iter()
                    .filter(|c| c.change != ChangeKind::Unchanged)
                    .map(|c| format!("{} {}", c.change.as_str(), c.component))
                    .collect();
                match (&s.error, done.is_empty()) {
                    (Some(e), _) => println!("{}: {}: NOT RECOVERED: {e}", r.node, s.service),
                    (None, true) => println!("{}: {}: as registered already", r.node, s.service),
                    (None, false) => println!("{}: {}: {}", r.node, s.service, done.join(", ")),
                }
            }
        }
    }
    report_failures(&results)?;
    if failed_services > 0 {
        anyhow::bail!("{failed_services} service(s) could not be recovered (see above)");
    }
    Ok(())
}
