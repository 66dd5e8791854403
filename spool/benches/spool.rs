//! Append + ack throughput of the spool, against a plain `BufWriter<File>` writing the same
//! payload bytes in the same run, with and without the same fsync cadence.
//!
//! `cargo bench -p loopline-spool` runs the criterion benchmarks (one record per iteration,
//! reported as records/s and bytes/s) and then prints a table of fixed-work runs with the
//! spool/baseline ratios.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use loopline_spool::{Appended, FsyncPolicy, Spool, SpoolConfig, WhenFull};

const INTERVAL: Duration = Duration::from_millis(200);
const SIZES: [(usize, &str); 2] = [(4 << 10, "4KiB"), (64 << 10, "64KiB")];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cadence {
    /// fdatasync every 200 ms (the spool: `FsyncPolicy::Interval` driven by `maybe_sync`).
    Interval,
    /// fdatasync after every record.
    Always,
    /// No fsync at all (baseline only).
    None,
}

impl Cadence {
    fn name(self) -> &'static str {
        match self {
            Cadence::Interval => "interval_200ms",
            Cadence::Always => "always",
            Cadence::None => "no_fsync",
        }
    }

    fn policy(self) -> FsyncPolicy {
        match self {
            Cadence::Interval => FsyncPolicy::Interval(INTERVAL),
            Cadence::Always => FsyncPolicy::Always,
            Cadence::None => FsyncPolicy::Never,
        }
    }
}

fn spool_config(cadence: Cadence) -> SpoolConfig {
    SpoolConfig {
        fsync: cadence.policy(),
        when_full: WhenFull::Block,
        ..SpoolConfig::default()
    }
}

/// Appends, hands out and acknowledges `records` records, as the agent does per batch.
fn run_spool(dir: &Path, cadence: Cadence, payload: &[u8], records: u64) -> Duration {
    let (mut spool, _) = Spool::open(dir, spool_config(cadence)).unwrap();
    let start = Instant::now();
    for _ in 0..records {
        let Appended::Stored { id, .. } = spool.append(payload.to_vec()).unwrap() else {
            panic!("spool full although every record is acknowledged")
        };
        let record = spool.next_unsent().unwrap().unwrap();
        black_box(&record.payload);
        spool.ack(id).unwrap();
        spool.maybe_sync(Instant::now()).unwrap();
    }
    let elapsed = start.elapsed();
    spool.close().unwrap();
    elapsed
}

/// Writes the same payload bytes through a `BufWriter<File>`, syncing on `cadence`.
fn run_baseline(dir: &Path, cadence: Cadence, payload: &[u8], records: u64) -> Duration {
    let path = dir.join("baseline.bin");
    let mut out = BufWriter::new(File::create(&path).unwrap());
    let start = Instant::now();
    let mut last_sync = start;
    for _ in 0..records {
        out.write_all(payload).unwrap();
        match cadence {
            Cadence::Always => {
                out.flush().unwrap();
                out.get_ref().sync_data().unwrap();
            }
            Cadence::Interval => {
                let now = Instant::now();
                if now - last_sync >= INTERVAL {
                    out.flush().unwrap();
                    out.get_ref().sync_data().unwrap();
                    last_sync = now;
                }
            }
            Cadence::None => {}
        }
    }
    out.flush().unwrap();
    let elapsed = start.elapsed();
    drop(out);
    std::fs::remove_file(&path).unwrap();
    elapsed
}

fn criterion_benches(c: &mut Criterion) {
    for (size, size_name) in SIZES {
        let payload = vec![0x5a_u8; size];
        let mut group = c.benchmark_group(format!("append_ack_{size_name}"));
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: size as u64,
        });
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
        for cadence in [Cadence::Interval, Cadence::Always] {
            group.bench_function(BenchmarkId::new("spool", cadence.name()), |b| {
                b.iter_custom(|iters| {
                    let dir = tempfile::tempdir().unwrap();
                    run_spool(dir.path(), cadence, &payload, iters)
                })
            });
        }
        for cadence in [Cadence::Interval, Cadence::Always, Cadence::None] {
            group.bench_function(BenchmarkId::new("bufwriter", cadence.name()), |b| {
                b.iter_custom(|iters| {
                    let dir = tempfile::tempdir().unwrap();
                    run_baseline(dir.path(), cadence, &payload, iters)
                })
            });
        }
        group.finish();
    }
}

/// Records per run: enough data for several interval syncs, few enough fsyncs for `Always`.
fn records_for(size: usize, cadence: Cadence) -> u64 {
    let bytes: u64 = match cadence {
        Cadence::Always => 8 << 20,
        // Long enough for many interval syncs and for the page cache to have to write back.
        _ => 1 << 30,
    };
    bytes / size as u64
}

struct Rate {
    records_per_s: f64,
    mb_per_s: f64,
}

fn rate(size: usize, records: u64, elapsed: Duration) -> Rate {
    let secs = elapsed.as_secs_f64();
    Rate {
        records_per_s: records as f64 / secs,
        mb_per_s: (records * size as u64) as f64 / secs / 1e6,
    }
}

/// Fixed-work runs, spool and baseline one after the other, printed with their ratios.
fn summary() {
    println!();
    println!(
        "append+ack throughput, spool vs BufWriter<File> of the same payload bytes (best of 2 runs)"
    );
    println!(
        "{:>6} {:>15} | {:>12} {:>9} | {:>12} {:>9} | {:>12} {:>9} | {:>8} {:>8}",
        "size",
        "fsync",
        "spool rec/s",
        "MB/s",
        "same-sync",
        "MB/s",
        "no-sync",
        "MB/s",
        "vs same",
        "vs none"
    );
    for (size, size_name) in SIZES {
        let payload = vec![0x5a_u8; size];
        for cadence in [Cadence::Interval, Cadence::Always] {
            let records = records_for(size, cadence);
            let best = |f: &dyn Fn(&Path) -> Duration| {
                (0..2)
                    .map(|_| {
                        let dir = tempfile::tempdir().unwrap();
                        f(dir.path())
                    })
                    .min()
                    .unwrap()
            };
            let spool = rate(
                size,
                records,
                best(&|d| run_spool(d, cadence, &payload, records)),
            );
            let same = rate(
                size,
                records,
                best(&|d| run_baseline(d, cadence, &payload, records)),
            );
            let none_records = records_for(size, Cadence::None);
            let none = rate(
                size,
                none_records,
                best(&|d| run_baseline(d, Cadence::None, &payload, none_records)),
            );
            println!(
                "{:>6} {:>15} | {:>12.0} {:>9.1} | {:>12.0} {:>9.1} | {:>12.0} {:>9.1} | {:>8.2} {:>8.2}",
                size_name,
                cadence.name(),
                spool.records_per_s,
                spool.mb_per_s,
                same.records_per_s,
                same.mb_per_s,
                none.records_per_s,
                none.mb_per_s,
                spool.mb_per_s / same.mb_per_s,
                spool.mb_per_s / none.mb_per_s,
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion);
    criterion.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and only checks that
    // the benchmarks run once.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
