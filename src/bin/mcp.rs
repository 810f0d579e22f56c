use clap::Parser;

use mcp::cli::{exit_code, run, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    mcp::init_logging(cli.global.verbose);
    if let Err(err) = run(cli).await {
        eprintln!("error: {err:#}");
        std::process::exit(exit_code(&err));
    }
}
