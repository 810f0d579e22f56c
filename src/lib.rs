//! mcp: a declarative deployer. The data flows one way:
//! [`plan`] -> [`transport`] -> [`agent`] -> [`registry`] + [`runtime`]; [`cli`] drives it
//! from the operator's side, naming nodes as [`node`] describes them.

pub mod agent;
pub mod cli;
pub mod node;
pub mod plan;
pub mod proto;
pub mod registry;
pub mod runtime;
pub mod transport;

/// Log to stderr (stdout may carry the protocol). `MCP_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("MCP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
