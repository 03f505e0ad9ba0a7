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
static GLOBAL: frontdesk_alloc::MiMalloc = frontdesk_alloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let levels = tracing_subscriber::EnvFilter::try_from_env("FRONTDESK_LOG")
            .unwrap_or_else(|_| "info".into());
        frontdesk::observe::otlp::log_subscriber(levels).init();
    }
    let result = match cli.command {
        Command::Validate { config } => return validate(&config),
        Command::Explain {
            config,
            method,
            url,
            headers,
            json,
            listener,
        } => match explain(&config, &method, &url, &headers, json, listener) {
            // Like grep: 1 when nothing matched, so scripts can tell.
            Ok(false) => return ExitCode::FAILURE,
            Ok(true) => Ok(()),
            Err(e) => Err(e),
        },
        Command::Transform {
            config,
            route,
            request,
            response: _,
            headers,
            method,
            path,
            params,
            status,
            head,
        } => {
            let ex = frontdesk::plugins::transform::offline::Exchange {
                request,
                method,
                path,
                headers,
                params,
                status,
            };
            // The config is loaded here, at the binary's edge, as `validate` and `explain` do.
            let loaded = frontdesk::runtime::reload::read_config(&config).and_then(|text| {
                frontdesk::runtime::reload::load_text(&config, &text).map_err(|d| {
                    let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
                    Diagnostic::error("", format!("invalid config:\n{}", lines.join("\n")))
                })
            });
            return match loaded {
                Ok(l) => frontdesk::plugins::transform::offline::main(&l.config, &route, &ex, head),
                Err(d) => {
                    eprintln!("error: {}", d.message);
                    ExitCode::FAILURE
                }
            };
        }
        Command::Schema => {
            // A closed pipe (`frontdesk schema | head`) is not an error worth a panic.
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{:#}", frontdesk::config::json_schema());
            Ok(())
        }
        Command::Run { config, pid_file } => run(&config, pid_file.as_deref()),
        Command::Reload { pid_file } => reload(&pid_file),
        Command::Demo { listen } => demo(&listen),
        Command::Proto { command } => cli::proto(command),
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
            // So that `validate` says whether the config would load.
            let fetched = match fetch_descriptors(&loaded.config) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print(&fetched);
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
                        loaded.warnings.len() + fetched.len() + warnings.len()
                    );
                    ExitCode::SUCCESS
                }
            }
        }
    }
}

/// Fetches the descriptors that `grpc_transcode` plugins take by gRPC server reflection, as a
/// load does before its (synchronous) build, on a runtime of its own that ends with the fetch.
/// Returns the fetch's warnings.
fn fetch_descriptors(cfg: &frontdesk_config::Config) -> anyhow::Result<Vec<Diagnostic>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start a runtime to fetch descriptors: {e}"))?;
    Ok(rt.block_on(frontdesk::grpc::descriptors::prefetch(cfg)))
}

fn explain(
    path: &Path,
    method: &str,
    url: &str,
    headers: &[String],
    json: bool,
    listener: Option<String>,
) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let mut req = frontdesk::route::ExplainRequest::from_url(method, url, headers)?;
    req.listener = listener;
    let text = frontdesk::runtime::reload::read_config(path)
        .map_err(|d| anyhow::anyhow!("{}", d.message))?;
    let invalid = |d: Vec<Diagnostic>| {
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    };
    let loaded = frontdesk::runtime::reload::load_text(path, &text).map_err(invalid)?;
    fetch_descriptors(&loaded.config)?;
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
    Ok(explanation.matched.is_some())
}

fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if worker_threads == 1 {
        // One worker: a current-thread runtime has no work-stealing overhead.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // An idle worker hands over the access-log lines it has batched.
            .on_thread_park(frontdesk::observe::access_log::thread_parks)
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
            .on_thread_park(frontdesk::observe::access_log::thread_parks)
            .build()
    };
    rt.context("cannot start the async runtime")
}

fn run(path: &Path, pid_file: Option<&Path>) -> anyhow::Result<()> {
    // The worker count is read before the runtime exists; errors surface again, fully, at start.
    let threads = frontdesk::runtime::reload::read_config(path).map_or(0, |t| {
        frontdesk::config::worker_threads(&t, &|k| std::env::var(k).ok())
    });
    runtime(threads)?.block_on(async {
        let signals = Signals::install()?;
        let gw = Gateway::start(path).await?;
        let pid = pid_file.map(PidFile::write).transpose()?;
        let result = gw.run_until_signal(signals).await;
        drop(pid);
        result?;
        Ok(())
    })
}

/// The pid file of a running gateway: written once the listeners are bound, removed when the
/// process exits normally.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &Path) -> anyhow::Result<PidFile> {
        // Written beside and renamed into place, so `frontdesk reload` never reads half a file.
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `frontdesk reload`: SIGHUP to the gateway named in `pid_file`, which reloads as for a file change.
fn reload(pid_file: &Path) -> anyhow::Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the pid file {}", pid_file.display()))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| {
            format!(
                "{}: not a process id: {:?}",
                pid_file.display(),
                text.trim()
            )
        })?;
    // A stale pid file may name a reused pid: signal only a process that is a frontdesk.
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero())) {
        anyhow::ensure!(
            comm.trim().starts_with("frontdesk"),
            "{}: process {} is {:?}, not frontdesk (a stale pid file?)",
            pid_file.display(),
            pid.as_raw_nonzero(),
            comm.trim()
        );
    }
    kill_process(pid, Signal::HUP).with_context(|| {
        format!(
            "cannot signal process {} from {}",
            pid.as_raw_nonzero(),
            pid_file.display()
        )
    })?;
    println!("sent SIGHUP to frontdesk (pid {})", pid.as_raw_nonzero());
    Ok(())
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
