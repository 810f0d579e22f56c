use clap::Parser;

use mcp::cli::{exit_code, run, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    mcp::init_logging(cli.global.verbose);
    if let Err(err) = run(cli).await {
        // Not a failure: `mcp plan` says so with its exit code, its output said the rest.
        if err.downcast_ref::<mcp::cli::PendingChanges>().is_some() {
            std::process::exit(exit_code(&err));
        }
        // The message may carry a node's, a container's or a registry's words.
        eprintln!("error: {}", mcp::cli::output::printable(&format!("{err:#}"), true));
        std::process::exit(exit_code(&err));
    }
}
