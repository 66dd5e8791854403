//! Cost of one simulated inference, as the edge agent pays it: `cargo bench -p loopline-npusim`.
//!
//! Prints nanoseconds per `infer` for each profile in a steady workload (one small model every
//! 10 ms with a health report every second) and in an overheated, throttling one.

use std::hint::black_box;
use std::time::Instant;

use loopline_npusim::{Fault, Npu, Profile};

/// Calls per run; `NPUSIM_BENCH_CALLS` overrides it (e.g. to count instructions under
/// `valgrind --tool=callgrind`).
fn calls() -> i64 {
    std::env::var("NPUSIM_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn run(profile: Profile, overheat: bool) -> f64 {
    let calls = calls();
    let mut npu = Npu::new(profile, 1, 0);
    if overheat {
        npu.inject(
            Fault::Overheat {
                delta_c: 45.0,
                duration_us: u64::MAX,
            },
            0,
        );
    }
    let started = Instant::now();
    for i in 0..calls {
        let now = i * 10_000;
        let _ = black_box(npu.infer(now, black_box(400_000), black_box(512)));
        if i % 100 == 0 {
            black_box(npu.health(now));
        }
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    for profile in Profile::ALL {
        let steady = run(profile, false);
        let hot = run(profile, true);
        println!("{profile:10} infer: {steady:6.1} ns steady, {hot:6.1} ns overheated");
    }
}
