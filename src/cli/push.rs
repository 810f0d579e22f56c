//! `mcp push <file> <service> [path]`: copy a file into one of the service's volume dirs on
//! its node, streamed in chunks over the same session, written atomically there.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use data_encoding::BASE64;
use sha2::{Digest, Sha256};

use super::output::Meter;
use super::{Ctx, InvalidInput, NodeOpts};
use crate::agent::files::CHUNK;
use crate::proto::{self, PutBeginParams, PutChunkParams, PutEndParams, TransferInfo};

#[derive(Debug, Args)]
pub struct Opts {
    /// The local file.
    pub file: PathBuf,
    pub service: String,
    /// Where: relative to the service's first volume dir (default: the file's name there), or
    /// an absolute path inside one of its volume dirs.
    pub path: Option<String>,
    /// File mode on the node, octal (default: the local file's mode).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    #[command(flatten)]
    pub node: NodeOpts,
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0644"))
}

pub async fn run(ctx: &Ctx, opts: Opts) -> Result<()> {
    let mut file = std::fs::File::open(&opts.file).with_context(|| format!("cannot read {}", opts.file.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(InvalidInput(format!("{} is not a regular file", opts.file.display())).into());
    }
    let name = opts
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file has no usable name")?
        .to_string();
    let node = ctx.service_node(&opts.service, &opts.node)?;
    let mut session = ctx.connect(node).await?;
    let begin = PutBeginParams {
        service: opts.service.clone(),
        path: opts.path.clone(),
        name,
        mode: opts.mode.unwrap_or(meta.permissions().mode() & 0o7777),
        size: meta.len(),
    };
    let info: TransferInfo = session.call(proto::PUT_BEGIN, &begin, &mut |_| {}).await.context("push refused")?;
    let mut meter = Meter::new(&format!("push {}", opts.file.display()), meta.len(), ctx.quiet);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        let chunk = PutChunkParams { token: info.token, data: BASE64.encode(&buf[..n]) };
        sent = session.call(proto::PUT_CHUNK, &chunk, &mut |_| {}).await.context("push interrupted; nothing was written")?;
        meter.update(sent);
    }
    meter.finish();
    let sha256 = crate::plan::hex_prefix(&hash.finalize(), 64);
    let done: TransferInfo = session.call(proto::PUT_END, &PutEndParams { token: info.token, sha256 }, &mut |_| {}).await?;
    println!("pushed {} to {}:{} ({sent} bytes, mode {:04o})", opts.file.display(), node.name, done.path, done.mode);
    Ok(())
}
