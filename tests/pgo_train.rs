//! The profile-guided build's training load (`bench/train`, run by `bench/pgo.sh`) against the
//! real binary: every row it trains on must reach the gateway and come back right, or the
//! release build would be trained on errors.

#[path = "../bench/train/lib.rs"]
mod train;

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_load_runs_every_row_through_the_real_binary() {
    let load = train::Load {
        per_row: Duration::from_millis(300),
        connections: 4,
    };
    let report = train::train(std::path::Path::new(common::bin()), load)
        .await
        .expect("every row answered as expected");
    let names: Vec<_> = report.rows.iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        ["http", "https", "h2c", "h2", "gzip", "key", "jwt", "cache"]
    );
    for row in &report.rows {
        assert!(row.ok >= 4, "row {} got {} answers", row.name, row.ok);
    }
    // The profile is written as the process exits: it must exit by itself, cleanly.
    assert!(report.exit.success(), "gateway exit: {}", report.exit);
    // The access log was on and every answered request is in it (drained at shutdown).
    let answered: u64 = report.rows.iter().map(|r| r.ok).sum();
    assert_eq!(report.logged, answered, "access-log lines vs answers");
}
