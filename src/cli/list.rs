//! `mcp list`: services from every node's registry (no runtime query).

use anyhow::Result;
use clap::Args;

use super::output::{table, timestamp};
use super::{print_json, report_failures, Ctx, OutputOpts};
use crate::proto::{self, ListResult};

#[derive(Debug, Args)]
pub struct Opts {
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let results = ctx
        .each_node(|mut s| async move { s.call::<_, ListResult>(proto::LIST, &serde_json::json!({}), &mut |_| {}).await })
        .await;
    if opts.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
        return report_failures(&results);
    }
    let mut rows = Vec::new();
    for r in &results {
        for s in r.result.iter().flat_map(|l| &l.services) {
            let images: Vec<&str> = s.components.iter().map(|c| c.image.as_str()).collect();
            rows.push(vec![
                s.name.clone(),
                r.node.clone(),
                if s.active { "yes".into() } else { "no".into() },
                s.components.len().to_string(),
                timestamp(s.updated_at),
                images.join(","),
            ]);
        }
    }
    print!("{}", table(&["SERVICE", "NODE", "ACTIVE", "COMPONENTS", "UPDATED (UTC)", "IMAGES"], &rows));
    report_failures(&results)
}
