//! `mcp deploy <service>[/<component>] | <file.toml>`

use anyhow::{Context as _, Result};
use clap::Args;

use super::{print_json, Ctx, OutputOpts};
use crate::proto::{self, ApplyResult, ChangeKind, DeployManyItem, DeployManyParams, DeployParams};

#[derive(Debug, Args)]
pub struct Opts {
    /// A service name (its definition is <services dir>/<name>.toml), `name/component` to deploy
    /// only that component, or the path to a definition file. Several services: one request
    /// per node, each service all-or-nothing on its own.
    #[arg(value_name = "SERVICE[/COMPONENT] | FILE", required = true, num_args = 1..)]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    if opts.targets.len() > 1 {
        return deploy_many(ctx, &opts).await;
    }
    let target = &opts.targets[0];
    // Everything that can be checked locally is, before any node is contacted.
    let (plan, path, component) = ctx.load_definition(target)?;
    if let Some(c) = &component {
        if plan.component(c).is_none() {
            let names: Vec<&str> = plan.components.iter().map(|c| c.name.as_str()).collect();
            return Err(super::NotFound(format!(
                "{} defines no component {c:?} (it has: {})",
                path.display(),
                names.join(", ")
            ))
            .into());
        }
    }
    let node = ctx.plan_node(&plan)?;
    for warning in crate::plan::version::floating_images(&plan) {
        eprintln!("warning: {warning}");
    }
    let mut session = ctx.connect(node).await?;
    let params = DeployParams { plan, component };
    let result: ApplyResult = session
        .call(proto::DEPLOY, &params, &mut ctx.progress())
        .await
        .with_context(|| format!("deploy of {target} to node {} failed", node.name))?;
    report(&node.name, &result, opts.output.json, "deployed")
}

/// `mcp deploy a b c`: every definition loaded and checked first (one that does not load
/// stops them all, as `sync` does), then one `deploy_many` per node.
async fn deploy_many(ctx: &Ctx, opts: &Opts) -> Result<()> {
    let mut by_node: std::collections::BTreeMap<String, Vec<crate::plan::Plan>> = Default::default();
    let mut errors = Vec::new();
    for target in &opts.targets {
        match ctx.load_definition(target) {
            Ok((_, _, Some(c))) => errors.push(format!("{target}: deploy one component ({c}) on its own")),
            Ok((plan, _, None)) => match ctx.plan_node(&plan) {
                Ok(node) => by_node.entry(node.name.clone()).or_default().push(plan),
                Err(e) => errors.push(format!("{target}: {e:#}")),
            },
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        return Err(super::InvalidInput(format!("nothing was deployed; fix these first:\n{}", errors.join("\n"))).into());
    }
    let mut lines = Vec::new();
    for (node_name, plans) in by_node {
        for warning in plans.iter().flat_map(crate::plan::version::floating_images) {
            eprintln!("warning: {warning}");
        }
        let node = ctx.node(&node_name)?;
        let fail = |e: String| plans.iter().map(|p| super::sync::Line::failed(&p.name, &node_name, e.clone())).collect::<Vec<_>>();
        let mut session = match ctx.connect(node).await {
            Ok(s) => s,
            Err(e) => {
                lines.extend(fail(e.to_string()));
                continue;
            }
        };
        let params = DeployManyParams { plans: plans.clone() };
        match session.call::<_, Vec<DeployManyItem>>(proto::DEPLOY_MANY, &params, &mut ctx.progress()).await {
            Ok(items) => lines.extend(items.into_iter().map(|i| super::sync::line_of(i, &node_name))),
            Err(e) => lines.extend(fail(e.to_string())),
        }
    }
    super::sync::report(&mut lines, opts.output.json, "deploy")
}

/// A deploy-like result: `{"node", "result"}` as JSON, or [`print_apply`]'s lines.
pub fn report(node: &str, result: &ApplyResult, json: bool, verb: &str) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({ "node": node, "result": result }));
    }
    print_apply(node, result, verb);
    Ok(())
}

/// `hello: deployed to local (1 created)` and a line per changed component.
pub fn print_apply(node: &str, result: &ApplyResult, verb: &str) {
    if !result.changed() {
        println!("{}: unchanged on {node} ({} component{})", result.service, result.changes.len(), plural(result.changes.len()));
        return;
    }
    let mut counts: Vec<(ChangeKind, usize)> = Vec::new();
    for c in &result.changes {
        match counts.iter_mut().find(|(k, _)| *k == c.change) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.change, 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {}", k.as_str())).collect();
    println!("{}: {verb} on {node} ({})", result.service, summary.join(", "));
    for c in &result.changes {
        let spec = c.spec.as_deref().map(|s| format!("  spec {s}")).unwrap_or_default();
        println!("  {:<16} {:<10}{spec}", c.component, c.change.as_str());
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
