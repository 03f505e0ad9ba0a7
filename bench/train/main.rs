//! `pgo-train`: the training load of the profile-guided build (see `lib.rs` and `bench/pgo.sh`).
//!
//!     cargo run --example pgo-train -- GATEWAY_BINARY [SECONDS_PER_ROW] [CONNECTIONS]
//!
//! Prints each row's answers; exits 1 when a row failed or the gateway did not exit cleanly.

#[path = "lib.rs"]
mod train;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(gateway) = args.next() else {
        eprintln!("usage: pgo-train GATEWAY_BINARY [SECONDS_PER_ROW] [CONNECTIONS]");
        std::process::exit(2);
    };
    let number = |a: Option<String>, default: f64| -> f64 {
        a.map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("pgo-train: not a number: {s}");
                std::process::exit(2)
            })
        })
    };
    let load = train::Load {
        per_row: Duration::from_secs_f64(number(args.next(), 5.0)),
        connections: number(args.next(), 16.0) as usize,
    };
    match train::train(std::path::Path::new(&gateway), load).await {
        Ok(report) => {
            for row in &report.rows {
                println!("{:6} {:>8} answers", row.name, row.ok);
            }
            println!(
                "access log: {} lines; gateway exit: {}",
                report.logged, report.exit
            );
            if !report.exit.success() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("pgo-train: {e}");
            std::process::exit(1);
        }
    }
}
