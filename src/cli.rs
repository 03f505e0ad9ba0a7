//! The command line: `run`, `reload`, `validate`, `explain`, `transform`, `schema`, `demo`.

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
        /// Write the process id to this file once the listeners are bound (removed at exit),
        /// for `frontdesk reload` and service managers.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Reload a running gateway: send SIGHUP to the process named in its pid file.
    Reload {
        /// The pid file the gateway was started with (`run --pid-file`).
        #[arg(long)]
        pid_file: PathBuf,
    },
    /// Check a config: exit 0 if valid (warnings are printed), 1 with every error otherwise.
    Validate {
        /// Config file.
        #[arg(short, long, default_value = "frontdesk.yaml")]
        config: PathBuf,
    },
    /// Explain which route a request would take, offline: the routes passed over and why, the
    /// plugins that would run, and the upstream and path it would reach. Exits 1 when no route
    /// matches (the gateway would answer 404).
    Explain {
        /// Config file.
        #[arg(short, long, default_value = "frontdesk.yaml")]
        config: PathBuf,
        /// The request's method, e.g. GET.
        method: String,
        /// `http://host/path?query`, or `/path?query` without a host.
        url: String,
        /// A request header, `name: value`; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print the same JSON as the admin API's `GET /explain`.
        #[arg(long)]
        json: bool,
        /// The listener the request arrives on (client profiles may select by listener).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Run a route's `transform` offline on a body read from standard input and print the
    /// result (docs/transforms.md). Exits 1 with the error when the body does not fit.
    Transform {
        /// Config file.
        #[arg(short, long, default_value = "frontdesk.yaml")]
        config: PathBuf,
        /// The route whose transform runs (its own, else the global one).
        #[arg(long)]
        route: String,
        /// Transform a request body (what the upstream would get).
        #[arg(
            long,
            conflicts_with = "response",
            required_unless_present = "response"
        )]
        request: bool,
        /// Transform a response body (what the client would get).
        #[arg(long)]
        response: bool,
        /// A header, `name: value` (the request's with --request, the response's with
        /// --response); repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The request's method, for `$request.method`.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The request's path and query, for `$request` and the query and path steps.
        #[arg(long, default_value = "/")]
        path: String,
        /// A path parameter, `name=value` (`$request.params`, `from_param`); repeat for more.
        #[arg(long = "param")]
        params: Vec<String>,
        /// The response's status, for `$response.status` and `statuses`.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// Print the resulting head (method and target, or status; headers) before the body.
        #[arg(long)]
        head: bool,
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
