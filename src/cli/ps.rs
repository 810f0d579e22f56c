//! `mcp ps`: what the runtimes on every node run right now, with uptime.

use anyhow::Result;
use clap::Args;

use super::output::{duration, short_digest, table};
use super::{print_json, report_failures, Ctx, OutputOpts};
use crate::proto::{self, PsResult};

#[derive(Debug, Args)]
pub struct Opts {
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let results = ctx
        .each_node(|mut s| async move { s.call::<_, PsResult>(proto::PS, &serde_json::json!({}), &mut |_| {}).await })
        .await;
    if opts.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
        return report_failures(&results);
    }
    let mut rows = Vec::new();
    for r in &results {
        for c in r.result.iter().flat_map(|p| &p.containers) {
            rows.push(vec![
                c.name.clone(),
                r.node.clone(),
                match &c.health {
                    Some(h) => format!("{} ({h})", c.state),
                    None => c.state.clone(),
                },
                c.uptime_secs.map(duration).unwrap_or_else(|| "-".into()),
                c.image.clone(),
                crate::plan::version::shown_version(&c.image),
                c.id.chars().take(12).collect(),
                c.ports.join(","),
                c.address.clone().unwrap_or_else(|| "-".into()),
                short_digest(c.digest.as_deref()),
                if c.routes.is_empty() { "-".into() } else { c.routes.join("; ") },
            ]);
        }
    }
    print!("{}", table(&["NAME", "NODE", "STATE", "UPTIME", "IMAGE", "VERSION", "ID", "PORTS", "ADDRESS", "DIGEST", "ROUTES"], &rows));
    report_failures(&results)
}
