//! Cost of one 8-channel frame: `cargo run --release -p loopline-linesim --example throughput
//! [frames] [scenario]`. Prints ns per frame; to count instructions instead, run the release
//! binary under `valgrind --tool=callgrind` with a frame count and compare two counts (the
//! difference removes start-up).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use loopline_linesim::{LineSim, Scenario};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let frames: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let name = args.next().unwrap_or_else(|| "default".to_owned());
    let scenario = Scenario::named(&name)?;
    let rate = NonZeroU32::new(1_000).ok_or("rate")?;
    let mut sim = LineSim::new(&scenario, 1, "pump-1", rate, 0);
    let start = Instant::now();
    let mut checksum = 0.0f64;
    for _ in 0..frames {
        let sample = black_box(sim.next_sample());
        checksum += f64::from(sample.values[0]);
    }
    let elapsed = start.elapsed();
    println!(
        "scenario {name}: {frames} frames of 8 channels in {elapsed:.2?}: {:.1} ns/frame, {:.1} ns/channel-sample (checksum {checksum:.3})",
        elapsed.as_nanos() as f64 / frames as f64,
        elapsed.as_nanos() as f64 / frames as f64 / 8.0,
    );
    Ok(())
}
