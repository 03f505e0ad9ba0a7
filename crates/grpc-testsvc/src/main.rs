//! `grpc-testsvc [--listen ADDR]`: serves the test service (every service, both reflection
//! versions) over h2c for benchmarks and demos, prints the bound address on standard output, and
//! runs until interrupted (Ctrl-C). ADDR defaults to 127.0.0.1:50051; port 0 picks a free port.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut listen = "127.0.0.1:50051".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                eprintln!("usage: grpc-testsvc [--listen ADDR]");
                return ExitCode::from(2);
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("grpc-testsvc: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = grpc_testsvc::serve(listener).await;
    println!("{}", handle.addr());
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}
