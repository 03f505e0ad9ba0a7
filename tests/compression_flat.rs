//! Decompressing uploads in flat memory, through the real binary: a bomb whose single input
//! frame expands past 100 MiB, under a 1 GiB cap, streams to a slow upstream in order (gzip, br
//! and zstd) while the gateway's peak RSS stays within a few MiB of where it started.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

const MIB: usize = 1 << 20;
/// The plain body: this many blocks of 1 MiB, 128 MiB in all.
const BLOCKS: u64 = 128;
const TOTAL: u64 = BLOCKS * MIB as u64;
/// Each block starts with its index (8 bytes, big-endian), then zeros: it compresses a
/// thousandfold and more, yet a block out of place or repeated is seen.
const HEAD: usize = 8;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Compresses with the codec crates directly (not the gateway's code).
fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
                w.write_all(data).expect("br");
            }
            out
        }
        "zstd" => zstd::encode_all(data, 1).expect("zstd"),
        other => panic!("no coding {other}"),
    }
}

/// The whole body as `coding`. gzip members and zstd frames concatenate, so each block is two
/// (its index, then the zeros, compressed once); brotli is one stream of the whole body.
fn bomb(coding: &str) -> Vec<u8> {
    if coding == "br" {
        let mut plain = vec![0u8; TOTAL as usize];
        for i in 0..BLOCKS {
            let at = i as usize * MIB;
            plain[at..at + HEAD].copy_from_slice(&i.to_be_bytes());
        }
        return encode("br", &plain);
    }
    let zeros = encode(coding, &vec![0u8; MIB - HEAD]);
    let mut out = Vec::new();
    for i in 0..BLOCKS {
        out.extend_from_slice(&encode(coding, &i.to_be_bytes()));
        out.extend_from_slice(&zeros);
    }
    out
}

/// What the upstream saw of one upload.
#[derive(Default)]
struct Seen {
    bytes: AtomicU64,
    /// The first difference from the expected body, if any.
    wrong: Mutex<Option<String>>,
}

/// Checks `chunk`, found at offset `at` of the body, against the expected content.
fn check(at: u64, chunk: &[u8]) -> Result<(), String> {
    let mut off = at;
    let mut rest = chunk;
    while !rest.is_empty() {
        let block = off / MIB as u64;
        let within = (off % MIB as u64) as usize;
        let n = if within < HEAD {
            HEAD - within
        } else {
            (MIB - within).min(ZEROS.len())
        }
        .min(rest.len());
        let want: &[u8] = if within < HEAD {
            &block.to_be_bytes()[within..within + n]
        } else {
            &ZEROS[..n]
        };
        if &rest[..n] != want {
            return Err(format!("wrong bytes at offset {off} (block {block})"));
        }
        off += n as u64;
        rest = &rest[n..];
    }
    Ok(())
}

/// An upstream that reads the body slowly (a pause every MiB), checking every byte in order
/// without keeping any, and answers with what it saw.
async fn checking_sink(seen: Arc<Seen>) -> common::Upstream {
    common::upstream(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let mut body = req.into_body();
            let mut at = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return text(500, "the body broke off".into());
                };
                let Some(d) = frame.data_ref() else { continue };
                if let Err(e) = check(at, d) {
                    seen.wrong.lock().expect("lock").get_or_insert(e);
                }
                let before = at;
                at += d.len() as u64;
                seen.bytes.store(at, Ordering::SeqCst);
                if before / MIB as u64 != at / MIB as u64 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            text(200, format!("{at}"))
        }
    })
    .await
}

fn text(status: u16, s: String) -> Response<common::UpBody> {
    Response::builder()
        .status(status)
        .body(common::full(Bytes::from(s)))
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_under_a_large_cap_streams_to_the_upstream_in_flat_memory() {
    let seen = Arc::new(Seen::default());
    let up = checking_sink(seen.clone()).await;
    let gw = common::spawn_bin(&common::config(&format!(
        "upstreams:\n  up:\n    timeout: 300s\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - name: all\n    match: {{ paths: [/] }}\n    upstream: up\n    plugins:\n      compression: {{ request: {{ max_size: 1GiB }} }}\n",
        up.url()
    )));
    let client = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("client");
    let before = common::peak_rss_kib(gw.child.id());
    for coding in ["zstd", "br", "gzip"] {
        let wire = bomb(coding);
        // Small enough on the wire that it arrives in one frame, or very few.
        assert!(wire.len() < 160 << 10, "{coding}: {} bytes", wire.len());
        seen.bytes.store(0, Ordering::SeqCst);
        let resp = tokio::time::timeout(
            Duration::from_secs(300),
            client
                .post(format!("http://{}/upload", gw.addr))
                .header("content-encoding", coding)
                .body(wire)
                .send(),
        )
        .await
        .expect("answered in time")
        .expect("upload");
        let status = resp.status();
        let answer = resp.text().await.expect("answer");
        let peak = common::peak_rss_kib(gw.child.id());
        eprintln!("{coding}: {TOTAL} bytes decoded; gateway peak RSS {before} KiB -> {peak} KiB");
        assert_eq!(status, StatusCode::OK, "{coding}: {answer}");
        assert_eq!(answer, TOTAL.to_string(), "{coding}: every byte arrived");
        assert_eq!(seen.bytes.load(Ordering::SeqCst), TOTAL, "{coding}");
        if let Some(wrong) = seen.wrong.lock().expect("lock").take() {
            panic!("{coding}: {wrong}");
        }
        assert!(
            peak < before + 32 * 1024,
            "{coding}: peak RSS {peak} KiB, {before} KiB before: memory grew with the expansion"
        );
    }
}
