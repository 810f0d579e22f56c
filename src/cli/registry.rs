//! `mcp registry login|logout|list`: credentials (and a CA) for a private image registry,
//! kept by the node's agent where its podman reads them. The password is read from stdin
//! (`--password-stdin`) or a prompt without echo, sent inside the request, and never put in
//! an argv, a file of ours or a message.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use super::output::table;
use super::{print_json, report_failures, Ctx, InvalidInput, OutputOpts};
use crate::proto::{self, RegistryListResult, RegistryLoginParams, RegistryLogoutResult, RegistryParams};

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Store credentials for REGISTRY on the nodes (checked against the registry first).
    Login(LoginOpts),
    /// Remove the nodes' credentials for REGISTRY (and a CA `login --ca-file` installed).
    Logout(LogoutOpts),
    /// Registries the nodes have credentials for (never the secrets).
    List(ListOpts),
}

#[derive(Debug, Args)]
pub struct LoginOpts {
    /// host or host:port, as in image names (e.g. mcr.example.net:8443).
    pub registry: String,
    /// Only this node (default: every configured node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// PEM CA that signed the registry's certificate, installed in podman's certs dir.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// User name (asked for when missing and stdin is a terminal).
    #[arg(long, short = 'u', value_name = "USER")]
    pub username: Option<String>,
    /// Read the password from stdin (one line) instead of a prompt.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Args)]
pub struct LogoutOpts {
    pub registry: String,
    /// Only this node (default: every configured node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Args)]
pub struct ListOpts {
    /// Only this node (default: every configured node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Login(o) => login(ctx, o).await,
        Cmd::Logout(o) => logout(ctx, o).await,
        Cmd::List(o) => list(ctx, o).await,
    }
}

/// Longest password or CA file read (the agent refuses longer ones too).
const MAX_PASSWORD: u64 = 4096;
const MAX_CA: u64 = 1 << 20;

fn read_password(from_stdin: bool) -> Result<String> {
    let line = if from_stdin {
        let mut buf = String::new();
        std::io::stdin().lock().take(MAX_PASSWORD + 2).read_line(&mut buf).context("reading the password from stdin")?;
        buf
    } else if std::io::stdin().is_terminal() {
        prompt_hidden("Password: ")?
    } else {
        return Err(InvalidInput("no password: pass --password-stdin and write it to stdin (or run in a terminal to be asked)".into()).into());
    };
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(InvalidInput("the password is empty".into()).into());
    }
    Ok(password)
}

/// Ask on the terminal with echo off (restored afterwards, also when reading fails).
fn prompt_hidden(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is stdin, a terminal (checked by the caller); `old` is a valid termios.
    let have_tty = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have_tty {
        let mut quiet = old;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above, with a copy of the terminal's own settings.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut buf = String::new();
    let read = std::io::stdin().lock().take(MAX_PASSWORD + 2).read_line(&mut buf);
    if have_tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    eprintln!();
    read.context("reading the password")?;
    Ok(buf)
}

fn read_username(given: Option<String>) -> Result<String> {
    if let Some(u) = given {
        return Ok(u);
    }
    if !std::io::stdin().is_terminal() {
        return Err(InvalidInput("no user name: pass --username USER".into()).into());
    }
    eprint!("Username: ");
    let _ = std::io::stderr().flush();
    let mut buf = String::new();
    std::io::stdin().lock().take(300).read_line(&mut buf).context("reading the user name")?;
    Ok(buf.trim().to_string())
}

async fn login(ctx: &Ctx, o: LoginOpts) -> Result<()> {
    let targets = ctx.nodes_or_all(o.node.as_deref())?;
    let ca_pem = match &o.ca_file {
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("reading the CA file {}", p.display()))?;
            let mut text = String::new();
            f.take(MAX_CA + 1).read_to_string(&mut text).with_context(|| format!("reading the CA file {}", p.display()))?;
            if text.len() as u64 > MAX_CA || !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(InvalidInput(format!("{}: expected PEM certificates (-----BEGIN CERTIFICATE-----), at most 1 MiB", p.display())).into());
            }
            Some(text)
        }
        None => None,
    };
    let username = read_username(o.username.clone())?;
    let password = read_password(o.password_stdin)?;
    let params = RegistryLoginParams { registry: o.registry.clone(), username, password, ca_pem };
    let results = ctx
        .each_of(targets, move |mut s| {
            let params = params.clone();
            async move { s.call::<_, RegistryListResult>(proto::REGISTRY_LOGIN, &params, &mut |_| {}).await }
        })
        .await;
    if o.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
    } else {
        for r in results.iter().filter(|r| r.result.is_some()) {
            println!("{}: logged in to {}", r.node, o.registry);
        }
    }
    report_failures(&results)
}

async fn logout(ctx: &Ctx, o: LogoutOpts) -> Result<()> {
    let params = RegistryParams { registry: o.registry.clone() };
    let results = ctx
        .each_of(ctx.nodes_or_all(o.node.as_deref())?, move |mut s| {
            let params = params.clone();
            async move { s.call::<_, RegistryLogoutResult>(proto::REGISTRY_LOGOUT, &params, &mut |_| {}).await }
        })
        .await;
    if o.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
    } else {
        for r in &results {
            if let Some(res) = &r.result {
                let what = if res.logged_out { "logged out of" } else { "had no credentials for" };
                println!("{}: {what} {}", r.node, res.registry);
            }
        }
    }
    report_failures(&results)
}

async fn list(ctx: &Ctx, o: ListOpts) -> Result<()> {
    let results = ctx
        .each_of(ctx.nodes_or_all(o.node.as_deref())?, |mut s| async move {
            s.call::<_, RegistryListResult>(proto::REGISTRY_LIST, &serde_json::json!({}), &mut |_| {}).await
        })
        .await;
    if o.output.json {
        print_json(&serde_json::json!({ "nodes": results }))?;
        return report_failures(&results);
    }
    let mut rows = Vec::new();
    for r in &results {
        for e in r.result.iter().flat_map(|l| &l.registries) {
            rows.push(vec![r.node.clone(), e.registry.clone(), if e.ca { "yes".into() } else { "no".into() }]);
        }
    }
    print!("{}", table(&["NODE", "REGISTRY", "OWN CA"], &rows));
    report_failures(&results)
}
