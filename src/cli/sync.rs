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
use crate::proto::{
    self, ApplyResult, Change, DeployManyItem, DeployManyParams, ErrorCode, ListResult, PlanManyItem, PlanManyParams, PlanResult, ServiceParams,
};

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
    /// Per component, what the deploy did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
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

impl Line {
    pub fn failed(service: &str, node: &str, error: String) -> Line {
        Line { service: service.to_string(), node: node.to_string(), result: "failed".into(), error: Some(error), changes: Vec::new() }
    }
}

/// One service's answer in a batch: what changed, or `rejected` (invalid, or refused by the
/// node's policy: nothing of it ran) or `failed` (rolled back) with why.
pub fn line_of(i: DeployManyItem, node: &str) -> Line {
    match (i.result, i.error) {
        (Some(r), _) => Line { service: i.service, node: node.to_string(), result: summary(&r), error: None, changes: r.changes },
        (None, e) => {
            let rejected = e.as_ref().is_some_and(|e| matches!(e.code, ErrorCode::InvalidPlan | ErrorCode::BadRequest));
            Line {
                service: i.service,
                node: node.to_string(),
                result: if rejected { "rejected" } else { "failed" }.into(),
                error: Some(e.map(|e| e.message).unwrap_or_else(|| "no answer".into())),
                changes: Vec::new(),
            }
        }
    }
}

/// The lines as a table (or JSON), sorted; an error when a service failed (exit 1) or, with
/// none failed, was rejected (exit 2: nothing of it ran).
pub fn report(lines: &mut [Line], json: bool, what: &str) -> Result<()> {
    lines.sort_by(|a, b| (&a.node, &a.service).cmp(&(&b.node, &b.service)));
    if json {
        print_json(&lines)?;
    } else {
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| vec![l.service.clone(), l.node.clone(), l.result.clone(), l.error.clone().unwrap_or_default()])
            .collect();
        print!("{}", table(&["SERVICE", "NODE", "RESULT", "ERROR"], &rows));
    }
    let rejected = lines.iter().filter(|l| l.result == "rejected").count();
    let failed = lines.iter().filter(|l| l.error.is_some()).count() - rejected;
    if failed > 0 {
        bail!("{failed} of {} services failed to {what}{}", lines.len(), if rejected > 0 { format!(" ({rejected} rejected)") } else { String::new() });
    }
    if rejected > 0 {
        bail!(InvalidInput(format!("{rejected} of {} services were rejected (nothing of them ran); the others went ahead", lines.len())));
    }
    Ok(())
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
        let (limit, prune, plan_only, quiet) = (limit.clone(), opts.prune, opts.plan, ctx.quiet || opts.output.json);
        set.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            let fail_all = |e: String| -> Vec<Line> {
                plans
                    .iter()
                    .map(|p| Line::failed(&p.name, &node_name, e.clone()))
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
                        changes: Vec::new(),
                    })),
                    Err(e) => return fail_all(e.to_string()),
                }
            }
            if !plan_only && !plans.is_empty() {
                // One request for the node's services: one listing decides what is unchanged.
                let params = DeployManyParams { plans: plans.clone() };
                let mut progress = super::progress_printer(quiet);
                match session.call::<_, Vec<DeployManyItem>>(proto::DEPLOY_MANY, &params, &mut progress).await {
                    Ok(items) => lines.extend(items.into_iter().map(|i| line_of(i, &node_name))),
                    Err(e) => return fail_all(e.to_string()),
                }
            }
            if prune {
                match session.call::<_, ListResult>(proto::LIST, &serde_json::json!({}), &mut |_| {}).await {
                    Ok(list) => {
                        for s in list.services.iter().filter(|s| !plans.iter().any(|p| p.name == s.name)) {
                            if plan_only {
                                lines.push(Line { service: s.name.clone(), node: node_name.clone(), result: "would be pruned".into(), error: None, changes: Vec::new() });
                                continue;
                            }
                            let params = ServiceParams { service: s.name.clone() };
                            let r = session.call::<_, ApplyResult>(proto::REMOVE, &params, &mut |_| {}).await;
                            lines.push(Line {
                                service: s.name.clone(),
                                node: node_name.clone(),
                                result: if r.is_ok() { "pruned".into() } else { "failed".into() },
                                error: r.err().map(|e| e.to_string()),
                                changes: Vec::new(),
                            });
                        }
                    }
                    Err(e) => lines.push(Line { service: "*".into(), node: node_name.clone(), result: "failed".into(), error: Some(e.to_string()), changes: Vec::new() }),
                }
            }
            lines
        });
    }
    let mut lines: Vec<Line> = set.join_all().await.into_iter().flatten().collect();
    report(&mut lines, opts.output.json, "sync")?;
    let pending = lines.iter().filter(|l| l.result != "no changes").count();
    if opts.plan && pending > 0 {
        return Err(super::PendingChanges(pending).into());
    }
    Ok(())
}
