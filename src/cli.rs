//! The command line: `run`, `reload`, `validate`, `explain`, `transform`, `schema`, `demo`,
//! `proto pull`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
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
    /// Protobuf descriptors for gRPC translation.
    Proto {
        /// What to do.
        #[command(subcommand)]
        command: ProtoCommand,
    },
}

/// `frontdesk proto` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProtoCommand {
    /// Fetch a gRPC server's descriptors through server reflection (v1, else v1alpha) and write
    /// them as one encoded FileDescriptorSet (imports included, custom options such as
    /// google.api.http kept). Prints the services and the file count to stderr.
    Pull {
        /// The server: `http://host:port` (h2c) or `https://host:port`.
        #[arg(long = "reflect", value_name = "URL")]
        url: String,
        /// Where to write the FileDescriptorSet (replaced atomically).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// CA certificates (PEM) to trust for https, besides the system's.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        timeout: u64,
    },
}

/// Runs a `frontdesk proto` subcommand.
pub fn proto(command: ProtoCommand) -> anyhow::Result<()> {
    match command {
        ProtoCommand::Pull {
            url,
            output,
            ca,
            timeout,
        } => proto_pull(&url, &output, ca.as_deref(), Duration::from_secs(timeout)),
    }
}

fn proto_pull(
    url: &str,
    output: &Path,
    ca: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<()> {
    use frontdesk::grpc::reflect::{fetch, FetchOptions};
    let ca_pem = ca
        .map(|p| {
            std::fs::read(p).with_context(|| format!("cannot read the CA file {}", p.display()))
        })
        .transpose()?;
    let opts = FetchOptions {
        timeout,
        ca_pem,
        ..FetchOptions::default()
    };
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(fetch(url, &opts))
        .with_context(|| format!("reflection from {url}"))?;
    write_atomic(output, &fetched.encoded)
        .with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "{} services, {} files (reflection {}) from {url} -> {}",
        fetched.services.len(),
        fetched.set.file.len(),
        fetched.version,
        output.display()
    );
    for s in &fetched.services {
        eprintln!("  {s}");
    }
    Ok(())
}

/// Writes beside `path` and renames into place, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
