//! The `frontdesk` binary: parse the command line, set up logging and the runtime, and hand over to
//! the library. The only place that uses `anyhow` and exits the process.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use frontdesk::config::Diagnostic;
use frontdesk::runtime::Signals;
use frontdesk::snapshot::Snapshot;
use frontdesk::Gateway;

use cli::{Cli, Command};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FRONTDESK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Validate { config } => return validate(&config),
        Command::Explain {
            config,
            method,
            url,
            headers,
            json,
        } => explain(&config, &method, &url, &headers, json),
        Command::Schema => {
            // A closed pipe (`frontdesk schema | head`) is not an error worth a panic.
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{:#}", frontdesk::config::json_schema());
            Ok(())
        }
        Command::Run { config } => run(&config),
        Command::Demo { listen } => demo(&listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    let text = match frontdesk::runtime::reload::read_config(path) {
        Ok(t) => t,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::FAILURE;
        }
    };
    let print = |d: &[Diagnostic]| d.iter().for_each(|d| eprintln!("{d}"));
    match frontdesk::runtime::reload::load_text(path, &text) {
        Err(diags) => {
            print(&diags);
            ExitCode::FAILURE
        }
        Ok(loaded) => {
            let routes = loaded.config.routes.len();
            let upstreams = loaded.config.upstreams.len();
            let listeners = loaded.config.listeners.len();
            print(&loaded.warnings);
            match Snapshot::build(loaded.config, None) {
                Err(errs) => {
                    print(&errs);
                    ExitCode::FAILURE
                }
                Ok((_, warnings)) => {
                    print(&warnings);
                    println!(
                        "{}: ok ({listeners} listeners, {upstreams} upstreams, {routes} routes, {} warnings)",
                        path.display(),
                        loaded.warnings.len() + warnings.len()
                    );
                    ExitCode::SUCCESS
                }
            }
        }
    }
}

fn explain(
    path: &Path,
    method: &str,
    url: &str,
    headers: &[String],
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let req = frontdesk::route::ExplainRequest::from_url(method, url, headers)?;
    let text = frontdesk::runtime::reload::read_config(path)
        .map_err(|d| anyhow::anyhow!("{}", d.message))?;
    let invalid = |d: Vec<Diagnostic>| {
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    };
    let loaded = frontdesk::runtime::reload::load_text(path, &text).map_err(invalid)?;
    // No runtime: nothing is connected or started, only compiled.
    let (snap, _) = Snapshot::build(loaded.config, None).map_err(invalid)?;
    let explanation = snap.explain(&req);
    let out = if json {
        format!("{}\n", serde_json::to_string_pretty(&explanation)?)
    } else {
        explanation.to_string()
    };
    // A closed pipe (`frontdesk explain ... | head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if worker_threads == 1 {
        // One worker: a current-thread runtime has no work-stealing overhead.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        // 0: one per core this process may run on (available_parallelism honours the CPU
        // affinity mask and cgroup quotas).
        let n = if worker_threads > 0 {
            worker_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
    };
    rt.context("cannot start the async runtime")
}

fn run(path: &Path) -> anyhow::Result<()> {
    // The worker count is read before the runtime exists; errors surface again, fully, at start.
    let threads = frontdesk::runtime::reload::read_config(path)
        .ok()
        .and_then(|t| frontdesk::config::load_str(&t, &|k| std::env::var(k).ok()).ok())
        .map_or(0, |l| l.config.server.worker_threads);
    runtime(threads)?.block_on(async {
        let signals = Signals::install()?;
        let gw = Gateway::start(path).await?;
        gw.run_until_signal(signals).await?;
        Ok(())
    })
}

fn demo(listen: &str) -> anyhow::Result<()> {
    runtime(0)?.block_on(async {
        let signals = Signals::install()?;
        let path = frontdesk::demo::write_config(listen).await?;
        let gw = Gateway::start(&path).await?;
        if let Some(addr) = gw.local_addr("public").await {
            println!("{}", frontdesk::demo::tour(addr, gw.admin_addr()));
        }
        let result = gw.run_until_signal(signals).await;
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result?;
        Ok(())
    })
}
