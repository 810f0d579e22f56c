//! `mcp status [service]`: desired vs observed per component, drift, repairs by the agent's
//! monitor, recent events.

use anyhow::{Context as _, Result};
use clap::Args;

use super::output::{duration, printable, short_digest, table, timestamp};
use super::{print_json, report_failures, Ctx, NodeOpts, NodeResult, OutputOpts};
use crate::proto::{self, ComponentStatus, StatusParams, StatusResult};

#[derive(Debug, Args)]
pub struct Opts {
    /// Only this service (default: every service on every node).
    pub service: Option<String>,
    /// Recent events to show per service.
    #[arg(long, default_value_t = 5)]
    pub events: u32,
    /// Also ask each container's registry what its tag points at now (one round trip per
    /// image): says when a running container is behind its tag.
    #[arg(long)]
    pub check_registry: bool,
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let params = StatusParams { service: opts.service.clone(), events: opts.events, check_registry: opts.check_registry };
    let results: Vec<NodeResult<StatusResult>> = match &opts.service {
        Some(service) => {
            let node = ctx.service_node(service, &opts.node)?;
            let mut session = ctx.connect(node).await?;
            let r: StatusResult = session
                .call(proto::STATUS, &params, &mut |_| {})
                .await
                .with_context(|| format!("status of {service} on node {}", node.name))?;
            vec![NodeResult::new(node.name.clone(), Ok(r))]
        }
        None => {
            ctx.each_node(move |mut s| {
                let params = params.clone();
                async move { s.call::<_, StatusResult>(proto::STATUS, &params, &mut |_| {}).await }
            })
            .await
        }
    };
    if opts.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
        return report_failures(&results);
    }
    let mut rows = Vec::new();
    let mut events = Vec::new();
    // The address column only where some component has one (VMs on isolated networks).
    let any = |f: fn(&ComponentStatus) -> bool| results.iter().flat_map(|r| r.result.iter()).flat_map(|st| &st.services).flat_map(|s| &s.components).any(f);
    let addresses = any(|c| c.address.is_some());
    // The digest column only where some container was pulled or checked by the agent.
    let digests = any(|c| c.digest.is_some());
    // The health column only where some component has a health check the daemon probes.
    let health = any(|c| c.health.is_some());
    for r in &results {
        for s in r.result.iter().flat_map(|st| &st.services) {
            for c in &s.components {
                rows.push(vec![
                    format!("{}/{}", s.name, c.name),
                    r.node.clone(),
                    c.desired.clone(),
                    c.observed.clone(),
                    c.uptime_secs.map(duration).unwrap_or_else(|| "-".into()),
                    c.spec.clone(),
                    match c.last_repair {
                        Some(t) => format!("{} (last {})", c.repairs, timestamp(t)),
                        None => c.repairs.to_string(),
                    },
                    c.drift.clone().unwrap_or_else(|| "-".into()),
                ]);
                if opts.check_registry {
                    let tag = match &c.tag {
                        None => "-".to_string(),
                        Some(t) if t.error.is_some() => format!("cannot ask: {}", t.error.as_deref().unwrap_or_default()),
                        Some(t) if t.moved => format!("MOVED to {} (redeploy to update)", short_digest(t.digest.as_deref())),
                        Some(_) => "current".to_string(),
                    };
                    rows.last_mut().expect("just pushed").push(tag);
                }
                if health {
                    let h = match (&c.health, &c.health_detail) {
                        (Some(h), Some(why)) => format!("{h}: {why}"),
                        (Some(h), None) => h.clone(),
                        (None, _) => "-".into(),
                    };
                    rows.last_mut().expect("just pushed").insert(4, h);
                }
                if digests {
                    rows.last_mut().expect("just pushed").insert(6 + usize::from(health), short_digest(c.digest.as_deref()));
                }
                if addresses {
                    rows.last_mut().expect("just pushed").insert(2, c.address.clone().unwrap_or_else(|| "-".into()));
                }
            }
            for e in &s.events {
                let who = match &e.component {
                    Some(c) => format!("{}/{c}", e.service),
                    None => e.service.clone(),
                };
                events.push((e.time, format!("{}  {:<8} {:<24} {:<10} {}", timestamp(e.time), r.node, who, e.kind, e.message)));
            }
        }
    }
    let mut header = vec!["COMPONENT", "NODE", "DESIRED", "OBSERVED", "UPTIME", "SPEC", "REPAIRS", "DRIFT"];
    if opts.check_registry {
        header.push("TAG NOW");
    }
    if health {
        header.insert(4, "HEALTH");
    }
    if digests {
        header.insert(6 + usize::from(health), "DIGEST");
    }
    if addresses {
        header.insert(2, "ADDRESS");
    }
    print!("{}", table(&header, &rows));
    let routes: Vec<String> = results
        .iter()
        .flat_map(|r| r.result.iter())
        .flat_map(|st| &st.services)
        .flat_map(|s| s.components.iter().flat_map(move |c| c.routes.iter().map(move |route| format!("{}/{}: {route}", s.name, c.name))))
        .collect();
    if !routes.is_empty() {
        println!("\nRoutes (port on the node -> what a proxy should serve):");
        for line in routes {
            println!("  {}", printable(&line, false));
        }
    }
    if !events.is_empty() {
        events.sort_by_key(|(t, _)| *t);
        println!("\nRecent events (UTC):");
        for (_, line) in events {
            println!("  {}", printable(&line, false));
        }
    }
    report_failures(&results)
}
