//! `mcp plan <service|file>`: the plan(s) a definition evaluates to, as the agent would get
//! them (TOML or Nix; a Nix fleet file gives several). Validated; no node is contacted.

use anyhow::{bail, Result};
use clap::Args;

use super::{print_json, Ctx};
use crate::plan::load_service_files;

#[derive(Debug, Args)]
pub struct Opts {
    /// A service name (services/<name>.toml or .nix) or a definition file.
    #[arg(value_name = "SERVICE|FILE")]
    pub target: String,
}

pub fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let (path, component) = ctx.definition_path(&opts.target);
    if component.is_some() {
        bail!(super::InvalidInput(format!("{}: a plan is a whole service; drop the /component", opts.target)));
    }
    if !path.exists() {
        bail!(super::NotFound(format!("no service definition {}", path.display())));
    }
    let plans = load_service_files(&path)?;
    match plans.as_slice() {
        [one] => print_json(one),
        many => print_json(&many),
    }
}
