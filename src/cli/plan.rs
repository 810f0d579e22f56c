//! `mcp plan <service|file>`: what a deploy would do on the node, per component (create /
//! replace with the fields that differ / start / stop / remove / keep), nothing changed.
//! Exit 0 when nothing is pending, 5 when something is. `--offline`: the plan JSON a
//! definition evaluates to (TOML or Nix; a Nix fleet file gives several), no node contacted.

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::Serialize;

use super::output::printable;
use super::{print_json, Ctx, NodeOpts, OutputOpts, PendingChanges};
use crate::plan::{load_service_files, Plan};
use crate::proto::{self, DeployParams, PlanResult};

#[derive(Debug, Args)]
pub struct Opts {
    /// A service name (services/<name>.toml or .nix) or a definition file; `service/component`
    /// for one component.
    #[arg(value_name = "SERVICE|FILE")]
    pub target: String,
    /// Print the plan JSON the definition evaluates to; contact no node.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Serialize)]
pub struct NodePlan {
    pub node: String,
    pub result: PlanResult,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let (path, component) = ctx.definition_path(&opts.target);
    if !path.exists() {
        bail!(super::NotFound(format!("no service definition {}", path.display())));
    }
    let plans = load_service_files(&path)?;
    if opts.offline {
        if component.is_some() {
            bail!(super::InvalidInput(format!("{}: an offline plan is a whole service; drop the /component", opts.target)));
        }
        return match plans.as_slice() {
            [one] => print_json(one),
            many => print_json(&many),
        };
    }
    let mut out = Vec::new();
    for plan in &plans {
        out.push(preview(ctx, plan, component.clone(), &opts.node).await?);
    }
    let pending: usize = out.iter().map(|p| p.result.pending()).sum();
    if opts.output.json {
        print_json(&out)?;
    } else {
        for p in &out {
            print!("{}", describe(p));
        }
    }
    if pending > 0 {
        return Err(PendingChanges(pending).into());
    }
    Ok(())
}

/// Ask `plan`'s node what a deploy would do.
pub async fn preview(ctx: &Ctx, plan: &Plan, component: Option<String>, node: &NodeOpts) -> Result<NodePlan> {
    let node = match &node.node {
        Some(n) => ctx.node(n)?,
        None => ctx.plan_node(plan)?,
    };
    let mut session = ctx.connect(node).await?;
    let params = DeployParams { plan: plan.clone(), component };
    let result: PlanResult =
        session.call(proto::PLAN, &params, &mut |_| {}).await.with_context(|| format!("plan of {} on node {}", plan.name, node.name))?;
    Ok(NodePlan { node: node.name.clone(), result })
}

/// `hello on local: 2 changes` and a line per component, diffs below a replace.
pub fn describe(p: &NodePlan) -> String {
    let r = &p.result;
    let mut s = match r.pending() {
        0 => format!("{} on {}: no changes\n", r.service, p.node),
        n => format!("{} on {}: {n} change{}\n", r.service, p.node, if n == 1 { "" } else { "s" }),
    };
    for c in &r.changes {
        s.push_str(&format!("  {:<16} {}\n", c.component, c.action));
        for d in &c.diff {
            let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "(unset)".into());
            s.push_str(&format!("      {}: {} -> {}\n", d.field, v(&d.old), v(&d.new)));
        }
        if let Some(why) = &c.reason {
            s.push_str(&format!("      ({why})\n"));
        }
    }
    printable(&s, true).into_owned()
}
