//! `mcp pull <service> <path> [file]`: copy a file out of one of the service's volume dirs,
//! streamed in chunks, written atomically here with the node's file mode.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use data_encoding::BASE64;

use super::output::Meter;
use super::{Ctx, NodeOpts};
use crate::plan::hex_prefix;
use crate::proto::{self, GetBeginParams, GetChunkParams, GetEndParams, TransferInfo, MODE_BITS};

#[derive(Debug, Args)]
pub struct Opts {
    pub service: String,
    /// Relative to the service's first volume dir, or absolute inside one of its volume dirs.
    pub path: String,
    /// Local destination (default: the file's name in the current dir).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeOpts,
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let dest = match &opts.file {
        Some(f) if f.is_dir() => f.join(file_name(&opts.path)?),
        Some(f) => f.clone(),
        None => PathBuf::from(file_name(&opts.path)?),
    };
    let node = ctx.service_node(&opts.service, &opts.node)?;
    let mut session = ctx.connect(node).await?;
    let begin = GetBeginParams { service: opts.service.clone(), path: opts.path.clone() };
    let info: TransferInfo = session.call(proto::GET_BEGIN, &begin, &mut |_| {}).await.context("pull refused")?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".mcp-pull-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut meter = Meter::new(&format!("pull {}", info.path), info.size, ctx.quiet);
    let mut got = 0u64;
    let mut hash = sha2::Sha256::default();
    while got < info.size {
        let data: String = session.call(proto::GET_CHUNK, &GetChunkParams { token: info.token, offset: got }, &mut |_| {}).await?;
        let bytes = BASE64.decode(data.as_bytes()).context("the agent sent a bad chunk")?;
        if bytes.is_empty() {
            bail!("{} shrank while it was read ({got} of {} bytes); nothing was written", info.path, info.size);
        }
        if got + bytes.len() as u64 > info.size {
            bail!("the agent sent more of {} than its {} bytes; nothing was written", info.path, info.size);
        }
        tmp.write_all(&bytes)?;
        sha2::Digest::update(&mut hash, &bytes);
        got += bytes.len() as u64;
        meter.update(got);
    }
    meter.finish();
    // The agent checks that what arrived is what it served (SHA-256).
    let sha256 = hex_prefix(&sha2::Digest::finalize(hash), 64);
    let _: bool = session
        .call(proto::GET_END, &GetEndParams { token: info.token, sha256: Some(sha256) }, &mut |_| {})
        .await
        .with_context(|| format!("pull of {} failed; nothing was written", info.path))?;
    tmp.as_file().sync_all()?;
    // Permission bits only: a setuid file on the node is not one here.
    let mode = info.mode & MODE_BITS;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    tmp.persist(&dest).with_context(|| format!("cannot write {}", dest.display()))?;
    println!("pulled {}:{} to {} ({got} bytes, mode {mode:04o})", node.name, info.path, dest.display());
    Ok(())
}

fn file_name(path: &str) -> Result<String> {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{path:?} names no file"))
}
