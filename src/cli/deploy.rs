//! `mcp deploy <service>[/<component>] | <file.toml>`

use anyhow::{Context as _, Result};
use clap::Args;

use super::{print_json, Ctx, OutputOpts};
use crate::proto::{self, ApplyResult, ChangeKind, DeployParams};

#[derive(Debug, Args)]
pub struct Opts {
    /// A service name (its definition is <services dir>/<name>.toml), `name/component` to deploy
    /// only that component, or the path to a definition file.
    #[arg(value_name = "SERVICE[/COMPONENT] | FILE")]
    pub target: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    // Everything that can be checked locally is, before any node is contacted.
    let (plan, path, component) = ctx.load_definition(&opts.target)?;
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
        .with_context(|| format!("deploy of {} to node {} failed", opts.target, node.name))?;
    report(&node.name, &result, opts.output.json, "deployed")
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
