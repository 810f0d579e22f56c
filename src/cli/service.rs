//! `mcp service show|edit|export`: a service's spec as the agent holds it, and editing the
//! local definition safely.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

use super::deploy::print_apply;
use super::{print_json, Ctx, InvalidInput, NodeOpts};
use crate::plan::{export, load_service_file, parse_service_toml, to_toml, validate, Plan};
use crate::proto::{self, ApplyResult, DeployParams, ServiceParams};

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Print the spec the node's agent holds (TOML, or --json for the plan).
    Show {
        service: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeOpts,
    },
    /// Edit the local definition in $EDITOR; a valid result is saved and deployed, an
    /// invalid one is refused and the file is left as it was.
    Edit { service: String },
    /// Write the agent's spec as a service file, Kubernetes YAML (a Secret and a Pod per
    /// component, for `podman kube play` or kubectl) or quadlet units (to FILE, a directory for
    /// quadlet; else stdout). Files are written 0600: they may hold the environment.
    Export {
        service: String,
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Toml)]
        format: ExportFormat,
        #[command(flatten)]
        node: NodeOpts,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// mcp's own service file.
    Toml,
    /// Kubernetes objects (YAML).
    Kube,
    /// podman quadlet `.container` units (and `.env` files).
    Quadlet,
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Show { service, json, node } => {
            let plan = fetch(ctx, &service, &node).await?;
            if json {
                print_json(&plan)
            } else {
                print!("{}", to_toml(&plan));
                Ok(())
            }
        }
        Cmd::Export { service, file, format, node } => {
            let plan = fetch(ctx, &service, &node).await?;
            let text = match format {
                ExportFormat::Toml => to_toml(&plan),
                ExportFormat::Kube => export::to_kube(&plan).map_err(InvalidInput)?,
                ExportFormat::Quadlet => {
                    let files = export::to_quadlet(&plan).map_err(InvalidInput)?;
                    let Some(dir) = file else {
                        bail!(InvalidInput("quadlet writes several files: give a directory, e.g. ~/.config/containers/systemd".into()));
                    };
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    for (name, text) in files {
                        write_atomic(&dir.join(&name), &text)?;
                        eprintln!("wrote {}", dir.join(&name).display());
                    }
                    return Ok(());
                }
            };
            match file {
                Some(path) => {
                    write_atomic(&path, &text)?;
                    eprintln!("exported {service} to {}", path.display());
                    Ok(())
                }
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Cmd::Edit { service } => edit(ctx, &service).await,
    }
}

async fn fetch(ctx: &Ctx, service: &str, node: &NodeOpts) -> Result<Plan> {
    let node = ctx.service_node(service, node)?;
    let mut session = ctx.connect(node).await?;
    let plan: Plan = session
        .call(proto::SHOW, &ServiceParams { service: service.to_string() }, &mut |_| {})
        .await
        .with_context(|| format!("service {service} on node {}", node.name))?;
    Ok(plan)
}

pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn edit(ctx: &Ctx, service: &str) -> Result<()> {
    let (path, _) = ctx.definition_path(service);
    let original = std::fs::read_to_string(&path)
        .with_context(|| format!("no definition to edit: cannot read {}", path.display()))?;
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    // Edit a copy: the real file changes only once the edit is valid.
    let dir = path.parent().unwrap_or(Path::new("."));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("toml").to_string();
    // Same dir and extension: a Nix file's relative imports still resolve.
    let mut copy = tempfile::Builder::new().prefix(".mcp-edit-").suffix(&format!(".{ext}")).tempfile_in(dir)?;
    copy.write_all(original.as_bytes())?;
    copy.flush()?;
    let mut words = editor.split_whitespace();
    let program = words.next().context("$EDITOR is empty")?;
    let status = Command::new(program)
        .args(words)
        .arg(copy.path())
        .status()
        .with_context(|| format!("cannot start the editor {editor:?} (set $EDITOR)"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}); {} is unchanged", path.display());
    }
    let edited = std::fs::read_to_string(copy.path())?;
    if edited == original {
        println!("{}: no changes", path.display());
        return Ok(());
    }
    let checked = if ext == "nix" {
        load_service_file(copy.path()).map_err(anyhow::Error::from)
    } else {
        parse_service_toml(&edited, &path)
            .map_err(anyhow::Error::from)
            .and_then(|plan| validate(&plan, &path.display().to_string()).map(|_| plan).map_err(anyhow::Error::from))
    };
    let plan = match checked {
        Ok(plan) => plan,
        Err(e) => {
            // Keep the operator's work beside the file, never over it.
            // Owner-only: it may hold the service's secrets.
            let rejected = path.with_extension(format!("{ext}.rejected"));
            let _ = std::fs::remove_file(&rejected);
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&rejected)
                .and_then(|mut f| f.write_all(edited.as_bytes()));
            bail!(InvalidInput(format!(
                "{e:#}\nthe edit was refused: {} is unchanged; your edited text is in {}",
                path.display(),
                rejected.display()
            )));
        }
    };
    write_atomic(&path, &edited)?;
    let node = ctx.plan_node(&plan)?;
    let mut session = ctx.connect(node).await?;
    let result: ApplyResult = session
        .call(proto::DEPLOY, &DeployParams { plan, component: None }, &mut ctx.progress())
        .await
        .with_context(|| format!("saved {}, but the deploy to node {} failed", path.display(), node.name))?;
    print_apply(&node.name, &result, "deployed");
    Ok(())
}
