//! `mcp node list|add|remove`. Edits keep mcp.toml's comments and order (toml_edit).

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::config::{default_path, Config, LOCAL_ADDRESS};
use super::output::table;
use super::{print_json, report_failures, Ctx, NodeResult, OutputOpts};
use crate::proto::{self, ListResult};
use crate::transport::ssh::parse_address;

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Every node: address, reachable, agent version, services.
    List(OutputOpts),
    /// Add a node to mcp.toml.
    Add(AddOpts),
    /// Remove a node from mcp.toml.
    Remove {
        /// The node's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AddOpts {
    /// A name for the node (what service files put in `node`).
    pub name: String,
    /// `host[:port]` to reach it over SSH, or `local`.
    pub address: String,
    /// SSH user (default: your user name).
    #[arg(long)]
    pub user: Option<String>,
    /// SSH identity file.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The agent command on the node (default `mcp-agent rpc`).
    #[arg(long)]
    pub agent: Option<String>,
}

#[derive(Debug, Serialize)]
struct NodeInfo {
    name: String,
    /// Every address configured, comma-separated.
    address: String,
    /// The one that answered (SSH nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    answered: Option<String>,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::List(out) => list(ctx, out).await,
        Cmd::Add(o) => add(ctx, o),
        Cmd::Remove { name } => remove(ctx, &name),
    }
}

async fn list(ctx: &Ctx, out: OutputOpts) -> Result<()> {
    let results: Vec<NodeResult<(String, usize, Option<String>)>> = ctx
        .each_node(|mut s| async move {
            let l: ListResult = s.call(proto::LIST, &serde_json::json!({}), &mut |_| {}).await?;
            Ok((s.agent_version().to_string(), l.services.len(), s.address().map(str::to_string)))
        })
        .await;
    let infos: Vec<NodeInfo> = ctx
        .config
        .nodes
        .iter()
        .zip(&results)
        .map(|(n, r)| NodeInfo {
            name: n.name.clone(),
            address: n.shown_address(),
            answered: r.result.as_ref().and_then(|(_, _, a)| a.clone()),
            reachable: r.result.is_some(),
            agent: r.result.as_ref().map(|(v, _, _)| v.clone()),
            services: r.result.as_ref().map(|(_, c, _)| *c),
            error: r.error.clone(),
        })
        .collect();
    if out.json {
        print_json(&infos)?;
    } else {
        let rows: Vec<Vec<String>> = infos
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    match &i.answered {
                        // Several addresses: the one that answered is marked.
                        Some(a) if i.address.contains(',') => i.address.split(',').map(|x| if answered_is(x, a) { format!("{x}*") } else { x.to_string() }).collect::<Vec<_>>().join(","),
                        _ => i.address.clone(),
                    },
                    if i.reachable { "yes".into() } else { "no".into() },
                    i.agent.clone().unwrap_or_else(|| "-".into()),
                    i.services.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print!("{}", table(&["NODE", "ADDRESS", "REACHABLE", "AGENT", "SERVICES"], &rows));
    }
    report_failures(&results)
}

/// Whether `configured` (as written in mcp.toml: port optional) is the `host:port` that answered.
fn answered_is(configured: &str, answered: &str) -> bool {
    parse_address(configured).is_ok_and(|(h, p)| parse_address(answered).is_ok_and(|a| a == (h, p)))
}

/// The file node add/remove edit: the loaded one, else the default location.
fn config_file(ctx: &Ctx) -> Result<PathBuf> {
    match &ctx.config.path {
        Some(p) => Ok(p.clone()),
        None => default_path().context("no config file and no HOME to put one in; pass --config FILE"),
    }
}

fn load_doc(path: &PathBuf) -> Result<toml_edit::DocumentMut> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.parse().with_context(|| format!("cannot parse {}", path.display()))
}

/// Write atomically, after checking the result still loads as a config.
fn save_doc(path: &PathBuf, doc: &toml_edit::DocumentMut) -> Result<()> {
    let text = doc.to_string();
    Config::parse(&text, path)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn add(ctx: &Ctx, o: AddOpts) -> Result<()> {
    if o.name.is_empty() || !o.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        bail!(super::InvalidInput(format!("{:?} is not a node name; expected letters, digits, '.', '_' or '-'", o.name)));
    }
    if o.address != LOCAL_ADDRESS {
        parse_address(&o.address).map_err(super::InvalidInput)?;
    }
    let path = config_file(ctx)?;
    let mut doc = load_doc(&path)?;
    let creating = ctx.config.path.is_none();
    let nodes = doc
        .entry("nodes")
        .or_insert(toml_edit::Item::ArrayOfTables(Default::default()))
        .as_array_of_tables_mut()
        .context("`nodes` in the config is not an array of tables ([[nodes]])")?;
    if nodes.iter().any(|t| t.get("name").and_then(|v| v.as_str()) == Some(o.name.as_str())) {
        bail!(super::InvalidInput(format!("node {:?} already exists in {}", o.name, path.display())));
    }
    if creating && nodes.is_empty() && o.name != "local" {
        // Without a file the local node was implicit; keep it.
        let mut local = toml_edit::Table::new();
        local["name"] = toml_edit::value("local");
        local["address"] = toml_edit::value(LOCAL_ADDRESS);
        nodes.push(local);
    }
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(o.name.clone());
    t["address"] = toml_edit::value(o.address.clone());
    if let Some(u) = o.user {
        t["user"] = toml_edit::value(u);
    }
    if let Some(i) = o.identity {
        t["identity"] = toml_edit::value(i.display().to_string());
    }
    if let Some(a) = o.agent {
        t["agent"] = toml_edit::value(a);
    }
    nodes.push(t);
    save_doc(&path, &doc)?;
    println!("added node {} ({}) to {}", o.name, o.address, path.display());
    if o.address != LOCAL_ADDRESS {
        println!("next: `mcp login {}` to check and trust its host key", o.name);
    }
    Ok(())
}

fn remove(ctx: &Ctx, name: &str) -> Result<()> {
    let path = config_file(ctx)?;
    let mut doc = load_doc(&path)?;
    let nodes = doc.get_mut("nodes").and_then(|n| n.as_array_of_tables_mut());
    let Some(nodes) = nodes else {
        bail!(super::NotFound(format!("node {name:?} is not in {}", path.display())));
    };
    let Some(i) = nodes.iter().position(|t| t.get("name").and_then(|v| v.as_str()) == Some(name)) else {
        bail!(super::NotFound(format!("node {name:?} is not in {}", path.display())));
    };
    nodes.remove(i);
    if nodes.is_empty() {
        doc.remove("nodes");
    }
    save_doc(&path, &doc)?;
    println!("removed node {name} from {}", path.display());
    Ok(())
}
