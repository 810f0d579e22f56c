//! `mcp sync [--prune]`: deploy every definition in the services dir to its node, nodes in
//! parallel (bounded), one summary line per service. `--prune` removes services a node runs
//! that are no longer defined for it (never without the flag).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::output::table;
use super::{print_json, Ctx, InvalidInput, OutputOpts};
use crate::plan::{load_service_files, Plan};
use crate::proto::{self, ApplyResult, DeployParams, ListResult, PlanManyItem, PlanManyParams, PlanResult, ServiceParams};

/// Nodes talked to at once.
const PARALLEL_NODES: usize = 8;

#[derive(Debug, Args)]
pub struct Opts {
    /// Also remove services that are deployed but no longer defined.
    #[arg(long)]
    pub prune: bool,
    /// Change nothing: say what a sync would do per service (exit 5 when something would change).
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Serialize)]
pub struct Line {
    pub service: String,
    pub node: String,
    /// created, replaced..., unchanged, pruned, failed
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every definition in the services dir, all valid, or an error listing every bad one.
pub fn load_all(ctx: &Ctx) -> Result<Vec<Plan>> {
    let dir = &ctx.config.services_dir;
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the services dir {}", dir.display()))?;
    let mut paths: Vec<_> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "nix")).collect();
    paths.sort();
    let mut plans: Vec<Plan> = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        // A .nix file may define several services (a fleet).
        match load_service_files(&p) {
            Ok(found) => {
                for plan in found {
                    if plans.iter().any(|q| q.name == plan.name) {
                        errors.push(format!("{}: service {} is defined twice in the services dir", p.display(), plan.name));
                    } else {
                        plans.push(plan);
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!(InvalidInput(format!("nothing was synced; fix these definitions first:\n{}", errors.join("\n"))));
    }
    Ok(plans)
}

fn summary(r: &ApplyResult) -> String {
    if !r.changed() {
        return "unchanged".into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &r.changes {
        *counts.entry(c.change.as_str()).or_default() += 1;
    }
    counts.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

/// `no changes`, or `2 pending: create web, replace db`.
fn planned(r: &PlanResult) -> String {
    let pending: Vec<String> = r.changes.iter().filter(|c| c.action != "keep").map(|c| format!("{} {}", c.action, c.component)).collect();
    if pending.is_empty() {
        "no changes".into()
    } else {
        format!("{} pending: {}", pending.len(), pending.join(", "))
    }
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let plans = load_all(ctx)?;
    let mut by_node: BTreeMap<String, Vec<Plan>> = BTreeMap::new();
    for plan in plans {
        let node = ctx.plan_node(&plan)?.name.clone();
        by_node.entry(node).or_default().push(plan);
    }
    if opts.prune {
        for n in &ctx.config.nodes {
            by_node.entry(n.name.clone()).or_default();
        }
    }
    let limit = Arc::new(Semaphore::new(PARALLEL_NODES));
    let mut set = JoinSet::new();
    for (node_name, plans) in by_node {
        let node = ctx.node(&node_name)?.clone();
        let transport = ctx.transport(&node);
        let (limit, prune, plan_only) = (limit.clone(), opts.prune, opts.plan);
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            let fail_all = |e: String| -> Vec<Line> {
                plans
                    .iter()
                    .map(|p| Line { service: p.name.clone(), node: node_name.clone(), result: "failed".into(), error: Some(e.clone()) })
                    .collect()
            };
            let mut session = match transport {
                Ok(t) => match t.open().await {
                    Ok(s) => s,
                    Err(e) => return fail_all(e.to_string()),
                },
                Err(e) => return fail_all(e.to_string()),
            };
            let mut lines = Vec::new();
            if plan_only {
                // One request for the node's services: one listing of the node for all.
                let params = PlanManyParams { plans: plans.clone() };
                match session.call::<_, Vec<PlanManyItem>>(proto::PLAN_MANY, &params, &mut |_| {}).await {
                    Ok(items) => lines.extend(items.into_iter().map(|i| Line {
                        result: i.result.as_ref().map(planned).unwrap_or_else(|| "failed".into()),
                        error: i.error.map(|e| e.to_string()),
                        service: i.service,
                        node: node_name.clone(),
                    })),
                    Err(e) => return fail_all(e.to_string()),
                }
            }
            for plan in plans.iter().filter(|_| !plan_only) {
                let params = DeployParams { plan: plan.clone(), component: None };
                let line = match session.call::<_, ApplyResult>(proto::DEPLOY, &params, &mut |_| {}).await.map(|r| summary(&r)) {
                    Ok(result) => Line { service: plan.name.clone(), node: node_name.clone(), result, error: None },
                    Err(e) => Line { service: plan.name.clone(), node: node_name.clone(), result: "failed".into(), error: Some(e.to_string()) },
                };
                lines.push(line);
            }
            if prune {
                match session.call::<_, ListResult>(proto::LIST, &serde_json::json!({}), &mut |_| {}).await {
                    Ok(list) => {
                        for s in list.services.iter().filter(|s| !plans.iter().any(|p| p.name == s.name)) {
                            if plan_only {
                                lines.push(Line { service: s.name.clone(), node: node_name.clone(), result: "would be pruned".into(), error: None });
                                continue;
                            }
                            let params = ServiceParams { service: s.name.clone() };
                            let r = session.call::<_, ApplyResult>(proto::REMOVE, &params, &mut |_| {}).await;
                            lines.push(Line {
                                service: s.name.clone(),
                                node: node_name.clone(),
                                result: if r.is_ok() { "pruned".into() } else { "failed".into() },
                                error: r.err().map(|e| e.to_string()),
                            });
                        }
                    }
                    Err(e) => lines.push(Line { service: "*".into(), node: node_name.clone(), result: "failed".into(), error: Some(e.to_string()) }),
                }
            }
            lines
        });
    }
    let mut lines: Vec<Line> = set.join_all().await.into_iter().flatten().collect();
    lines.sort_by(|a, b| (&a.node, &a.service).cmp(&(&b.node, &b.service)));
    if opts.output.json {
        print_json(&lines)?;
    } else {
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| vec![l.service.clone(), l.node.clone(), l.result.clone(), l.error.clone().unwrap_or_default()])
            .collect();
        print!("{}", table(&["SERVICE", "NODE", "RESULT", "ERROR"], &rows));
    }
    let failed = lines.iter().filter(|l| l.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} services failed to sync", lines.len());
    }
    let pending = lines.iter().filter(|l| l.result != "no changes").count();
    if opts.plan && pending > 0 {
        return Err(super::PendingChanges(pending).into());
    }
    Ok(())
}
