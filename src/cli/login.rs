//! `mcp login [node]`: the seed's login, re-imagined for SSH. For each node: show its host key
//! and record it once the operator accepts (`--yes` for scripts), refuse changed keys, then
//! check that the agent answers and speaks our protocol.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::config::NodeConfig;
use super::output::table;
use super::{exit_code, print_json, Ctx, NodeFailures};
use crate::transport::known_hosts::{fingerprint, HostKeyStatus};
use crate::transport::ssh::SshTransport;

#[derive(Debug, Args)]
pub struct Opts {
    /// Only this node (default: every configured node).
    pub node: Option<String>,
    /// Accept and record unknown host keys without asking (never changed ones).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    node: String,
    address: String,
    /// `SHA256:...` of the host key (SSH nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    host_key: Option<String>,
    /// known, recorded, not-accepted, changed, revoked, local
    trust: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip)]
    code: i32,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let nodes = ctx.nodes_or_all(opts.node.as_deref())?;
    let mut reports = Vec::new();
    for node in nodes {
        reports.push(login_one(ctx, node, &opts).await);
    }
    if opts.json {
        print_json(&reports)?;
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.node.clone(),
                    r.address.clone(),
                    r.host_key.clone().unwrap_or_else(|| "-".into()),
                    r.trust.clone(),
                    r.agent.clone().unwrap_or_else(|| "-".into()),
                    r.error.clone().map(|e| format!("error: {e}")).unwrap_or_else(|| "ok".into()),
                ]
            })
            .collect();
        print!("{}", table(&["NODE", "ADDRESS", "HOST KEY", "TRUST", "AGENT", "STATUS"], &rows));
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| r.error.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let code = failed.iter().map(|r| r.code).max().unwrap_or(1);
    Err(NodeFailures { count: failed.len(), code }.into())
}

async fn login_one(ctx: &Ctx, node: &NodeConfig, opts: &Opts) -> Report {
    let mut report = Report {
        node: node.name.clone(),
        address: node.shown_address(),
        host_key: None,
        trust: "local".into(),
        agent: None,
        error: None,
        code: 0,
    };
    let fail = |mut r: Report, e: anyhow::Error| {
        r.code = exit_code(&e);
        r.error = Some(format!("{e:#}"));
        r
    };
    if !node.is_local() {
        let ssh = match SshTransport::new(node, ctx.ssh.clone()) {
            Ok(t) => t,
            Err(e) => return fail(report, e.into()),
        };
        match trust_host(&ssh, node, opts).await {
            Ok((fp, trust)) => {
                report.host_key = Some(fp);
                report.trust = trust;
            }
            Err((fp, trust, e)) => {
                report.host_key = fp;
                report.trust = trust;
                return fail(report, e);
            }
        }
    }
    match ctx.connect(node).await {
        Ok(session) => {
            report.agent = Some(session.agent_version().to_string());
            if let Some(a) = session.address() {
                report.address = a.to_string();
            }
        }
        Err(e) => return fail(report, e.into()),
    }
    report
}

type TrustError = (Option<String>, String, anyhow::Error);

/// Probe the host key; record it if it is new and the operator accepts.
async fn trust_host(ssh: &SshTransport, node: &NodeConfig, opts: &Opts) -> Result<(String, String), TrustError> {
    let (key, status, at) = ssh.probe_host_key().await.map_err(|e| (None, "unreachable".into(), e.into()))?;
    let fp = fingerprint(&key);
    let algorithm = key.algorithm().to_string();
    match status {
        HostKeyStatus::Known => Ok((fp, "known".into())),
        HostKeyStatus::Changed { file, line } => Err((
            Some(fp.clone()),
            "CHANGED".into(),
            anyhow::anyhow!(
                "host key CHANGED: {algorithm} {fp} differs from line {line} of {}; not recorded. \
                 If the change is expected, remove that line and run `mcp login {}` again",
                file.display(),
                node.name
            ),
        )),
        HostKeyStatus::Revoked { file, line } => Err((
            Some(fp),
            "revoked".into(),
            anyhow::anyhow!("host key is revoked (line {line} of {})", file.display()),
        )),
        HostKeyStatus::Unknown => {
            let accepted = opts.yes || ask(&format!("node {} ({host}:{port}) shows host key {algorithm} {fp}. Trust it? [y/N] ", node.name, host = ssh.host_port(at).0, port = ssh.host_port(at).1));
            if !accepted {
                return Err((
                    Some(fp),
                    "not-accepted".into(),
                    anyhow::anyhow!("host key not accepted; run `mcp login {} --yes` to accept it", node.name),
                ));
            }
            let (host, port) = ssh.host_port(at);
            if let Err(e) = ssh.known_hosts().record(host, port, &key) {
                return Err((Some(fp), "unknown".into(), anyhow::anyhow!("cannot record the key in {}: {e}", ssh.known_hosts().own.display())));
            }
            Ok((fp, "recorded".into()))
        }
    }
}

/// Ask on the terminal; anything but y/yes (or no terminal) is no.
fn ask(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("{question}no terminal to ask on; use --yes");
        return false;
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

