//! `mcp build <service>`: build each image of the service file's `[build.images]` with podman,
//! from `<[build] workspace in mcp.toml>/<path>`, tagged as the components that run it name it,
//! and push it there (podman's own credentials on this machine: `podman login`, or
//! `REGISTRY_AUTH_FILE`). `mcp deploy` then pulls it on the node.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::{Ctx, InvalidInput};
use crate::plan::version::{image_version, ImageVersion};
use crate::plan::{build_info, Kind, Plan};

#[derive(Debug, Args)]
pub struct Opts {
    /// The service (its TOML definition names the images and their Dockerfiles).
    pub service: String,
    /// Build only; do not push.
    #[arg(long)]
    pub no_push: bool,
}

/// The references of `plan`'s container images whose name (last path element, without tag)
/// is `name`, each once: what a `[build.images]` entry is built as.
pub fn targets(plan: &Plan, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in plan.components.iter().filter(|c| c.kind == Kind::Container) {
        let repo = c.image.split('@').next().unwrap_or_default();
        let last = repo.rsplit('/').next().unwrap_or(repo);
        let base = last.split(':').next().unwrap_or(last);
        if base == name && !out.contains(&c.image) {
            out.push(c.image.clone());
        }
    }
    out
}

/// `podman build` for one image: every tag, the Dockerfile, the context.
pub fn build_argv(tags: &[String], dockerfile: &Path, context: &Path) -> Vec<String> {
    let mut argv = vec!["build".to_string()];
    for t in tags {
        argv.extend(["--tag".to_string(), t.clone()]);
    }
    argv.extend(["--file".to_string(), dockerfile.display().to_string(), context.display().to_string()]);
    argv
}

fn podman(argv: &[String], quiet: bool) -> Result<()> {
    let mut cmd = Command::new("podman");
    cmd.args(argv);
    if quiet {
        cmd.stdout(std::process::Stdio::null());
    } else {
        // Its output is progress: stderr, so stdout stays what mcp reports.
        cmd.stdout(std::io::stderr());
    }
    let status = cmd.status().with_context(|| "cannot run podman (is it installed on this machine?)".to_string())?;
    if !status.success() {
        bail!("`podman {}` failed ({status})", argv.first().map(String::as_str).unwrap_or_default());
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let (plan, file, _) = ctx.load_definition(&opts.service)?;
    if file.extension().and_then(|e| e.to_str()) != Some("toml") {
        bail!(InvalidInput(format!("{}: mcp build reads [build.images] from TOML service files", file.display())));
    }
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let info = build_info(&text, &file)?;
    if info.images.is_empty() {
        bail!(InvalidInput(format!("{} has no [build.images] (image name = \"Dockerfile\")", file.display())));
    }
    let Some(workspace) = &ctx.config.workspace else {
        bail!(InvalidInput(format!("no [build] workspace in {}: set where the services' sources are", ctx.config.origin())));
    };
    let context: PathBuf = workspace.join(info.path.as_deref().unwrap_or(&plan.name));
    if !context.is_dir() {
        bail!(InvalidInput(format!("{}: the build context {} is not a directory (workspace + path)", file.display(), context.display())));
    }
    // Everything is checked before anything is built.
    let mut jobs = Vec::new();
    for (name, dockerfile) in &info.images {
        let tags = targets(&plan, name);
        if tags.is_empty() {
            let images: Vec<&str> = plan.components.iter().map(|c| c.image.as_str()).collect();
            bail!(InvalidInput(format!("[build.images] {name}: no component runs an image named {name} (they run: {})", images.join(", "))));
        }
        if let Some(t) = tags.iter().find(|t| matches!(image_version(t), ImageVersion::Digest(_))) {
            bail!(InvalidInput(format!("[build.images] {name}: {t} is pinned by digest; a build makes a new image: name it by a tag")));
        }
        let dockerfile = context.join(dockerfile);
        if !dockerfile.is_file() {
            bail!(InvalidInput(format!("[build.images] {name}: {} does not exist", dockerfile.display())));
        }
        jobs.push((name, tags, dockerfile));
    }
    for (name, tags, dockerfile) in jobs {
        if !ctx.quiet {
            eprintln!("building {name} ({}) from {}", tags.join(", "), dockerfile.display());
        }
        podman(&build_argv(&tags, &dockerfile, &context), ctx.quiet).with_context(|| format!("building {name}"))?;
        println!("{}: built {}", plan.name, tags.join(", "));
        if opts.no_push {
            continue;
        }
        for t in &tags {
            podman(&["push".to_string(), t.clone()], ctx.quiet).with_context(|| format!("pushing {t}"))?;
            println!("{}: pushed {t}", plan.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_argv() {
        let plan = crate::plan::parse_service_toml(
            "name = \"mcq\"\n[[components]]\nname = \"api\"\nimage = \"reg:5000/mc/mcq:v1\"\n[[components]]\nname = \"web\"\nimage = \"reg:5000/mc/mcq-web:v1\"\n\
             [[components]]\nname = \"worker\"\nimage = \"reg:5000/mc/mcq:v1\"\n",
            Path::new("mcq.toml"),
        )
        .unwrap();
        assert_eq!(targets(&plan, "mcq"), vec!["reg:5000/mc/mcq:v1"]);
        assert_eq!(targets(&plan, "mcq-web"), vec!["reg:5000/mc/mcq-web:v1"]);
        assert!(targets(&plan, "other").is_empty());
        assert_eq!(
            build_argv(&["r/a:1".into(), "r/a:2".into()], Path::new("/w/mcq/Dockerfile.api"), Path::new("/w/mcq")),
            vec!["build", "--tag", "r/a:1", "--tag", "r/a:2", "--file", "/w/mcq/Dockerfile.api", "/w/mcq"]
        );
    }
}
