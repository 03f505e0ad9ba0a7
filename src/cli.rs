//! The command line: `run`, `validate`, `schema`, `demo`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Frontdesk, an API gateway.
#[derive(Debug, Parser)]
#[command(name = "frontdesk", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "frontdesk.yaml")]
        config: PathBuf,
    },
    /// Check a config: exit 0 if valid (warnings are printed), 1 with every error otherwise.
    Validate {
        /// Config file.
        #[arg(short, long, default_value = "frontdesk.yaml")]
        config: PathBuf,
    },
    /// Print the config's JSON Schema (draft-07).
    Schema,
    /// Run built-in demo upstreams and the gateway in front of them.
    Demo {
        /// Address for the gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}
