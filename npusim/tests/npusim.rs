//! Behaviour of the simulated NPU through its public API.
#![allow(clippy::unwrap_used)]

use loopline_npusim::fault::{MAX_OVERHEAT_DELTA_C, ScheduledFault};
use loopline_npusim::{Fault, FaultSchedule, Health, Npu, NpuError, NpuState, Profile};
use proptest::prelude::*;

const S: i64 = 1_000_000;

/// Operations that keep a Hailo-8L computing for about `secs` seconds at full clock.
fn ops_for(profile: Profile, secs: f64) -> u64 {
    (profile.spec().effective_ops_per_us() * secs * 1e6) as u64
}

/// Keeps the NPU computing back to back from `from` until `until`; returns the time reached.
fn saturate(npu: &mut Npu, from: i64, until: i64, chunk_secs: f64) -> i64 {
    let ops = ops_for(npu.profile(), chunk_secs);
    let mut t = from;
    while t < until {
        let inf = npu.infer(t, ops, 0).unwrap();
        t += i64::from(inf.latency_us);
    }
    t
}

#[test]
fn latency_grows_linearly_with_ops() {
    let p = Profile::Hailo8L;
    let x = 1_000_000_000;
    // Same seed, one call each: the same jitter factor multiplies all three.
    let lat = |ops| f64::from(Npu::new(p, 42, 0).infer(0, ops, 1024).unwrap().latency_us);
    let (l1, l2, l4) = (lat(x), lat(2 * x), lat(4 * x));
    let step = l2 - l1;
    assert!(((l4 - l2) - 2.0 * step).abs() <= 2.0, "{l1} {l2} {l4}");
    let nominal = p.spec().nominal_latency_us(x, 1024, 1.0);
    assert!(
        (l1 / nominal - 1.0).abs() < 0.2,
        "{l1} vs nominal {nominal}"
    );
    // 1e9 ops at 13 TOPS × 3 % is 2564 µs of compute.
    assert!((step - 2564.1).abs() / 2564.1 < 0.2, "{step}");
}

#[test]
fn compute_time_is_inverse_to_effective_tops() {
    let ops = 10_000_000_000;
    let compute = |p: Profile| {
        let inf = Npu::new(p, 9, 0).infer(0, ops, 0).unwrap();
        f64::from(inf.latency_us) - p.spec().setup_us(0)
    };
    // Both Hailo parts have σ = 3 %, so the same seed draws the same jitter.
    let ratio = compute(Profile::Hailo8) / compute(Profile::Hailo8L);
    let (a, b) = (Profile::Hailo8L.spec(), Profile::Hailo8.spec());
    let expected = (a.tops * a.small_model_efficiency) / (b.tops * b.small_model_efficiency);
    assert!((ratio - expected).abs() < 0.01, "{ratio} vs {expected}");
    // Doubling TOPS at equal efficiency halves compute time: the formula in the spec.
    let s = Profile::DxM1.spec();
    assert!(
        (s.compute_us(ops, 1.0) * s.tops - ops as f64 / (1e6 * s.small_model_efficiency)).abs()
            < 1e-3
    );
}

#[test]
fn a_tiny_model_is_dominated_by_fixed_costs() {
    // The agent's autoencoder: a few hundred thousand operations.
    for p in Profile::ALL {
        let s = p.spec();
        let compute = s.compute_us(400_000, 1.0);
        assert!(
            compute < 0.1 * s.setup_us(512),
            "{p}: {compute} µs of compute"
        );
    }
}

/// Overheats an idle device until it throttles; returns the time it reached level 1.
fn heat_until_throttled(npu: &mut Npu, delta_c: f64, secs: u64) -> i64 {
    npu.inject(
        Fault::Overheat {
            delta_c,
            duration_us: secs * 1_000_000,
        },
        0,
    );
    let mut t = 0;
    while npu.throttle_level() == 0 {
        t += S / 10;
        npu.advance(t);
        assert!(
            t < 1000 * S,
            "never throttled: {:.1} °C",
            npu.temperature_c()
        );
    }
    t
}

#[test]
fn latency_rises_when_throttled_and_falls_back_after() {
    let p = Profile::Hailo8L;
    let ops = 5_000_000_000;
    let mut hot = Npu::new(p, 5, 0);
    let t = heat_until_throttled(&mut hot, 45.0, 300);
    let mut cool = Npu::new(p, 5, 0);
    let fast = cool.infer(t, ops, 0).unwrap();
    let slow = hot.infer(t, ops, 0).unwrap();
    assert_eq!(slow.clock_mhz, 300);
    assert_eq!(fast.clock_mhz, 400);
    let setup = p.spec().setup_us(0);
    let ratio = (f64::from(slow.latency_us) - setup) / (f64::from(fast.latency_us) - setup);
    assert!((ratio - 1.0 / 0.75).abs() < 0.01, "{ratio}");

    // Once the overheat is over and the part has cooled, latency is back to normal.
    let later = 900 * S;
    hot.advance(later);
    assert_eq!(hot.throttle_level(), 0);
    cool.advance(later);
    let a = hot.infer(later, ops, 0).unwrap();
    let b = cool.infer(later, ops, 0).unwrap();
    assert_eq!(a, b);
}

#[test]
fn thermal_step_response_has_the_rc_time_constant() {
    let p = Profile::Hailo8L;
    let s = p.spec();
    let mut npu = Npu::new(p, 1, 0);
    let t0 = npu.temperature_c();
    assert!((t0 - s.steady_state_c(s.idle_power_w)).abs() < 1e-9);
    let tau_us = (s.thermal_tau_s() * 1e6) as i64;
    let t = saturate(&mut npu, 0, tau_us, 0.5);
    npu.advance(t);
    let target = s.steady_state_c(s.max_power_w);
    // One time constant (plus the few µs the loop overshot) covers 1 − 1/e of the gap.
    let expected = target - (target - t0) * (-(t as f64) / (tau_us as f64)).exp();
    assert!(
        (npu.temperature_c() - expected).abs() < 0.2,
        "{} vs {expected}",
        npu.temperature_c()
    );
    saturate(&mut npu, t, 12 * tau_us, 0.5);
    assert!(
        (npu.temperature_c() - target).abs() < 0.1,
        "{}",
        npu.temperature_c()
    );
    assert_eq!(
        npu.throttle_level(),
        0,
        "a healthy part flat out does not throttle"
    );
    let h = npu.health(12 * tau_us + S);
    assert!(h.utilisation > 0.99, "{}", h.utilisation);
}

#[test]
fn overheat_engages_the_ladder_and_it_releases_only_below_the_hysteresis() {
    let p = Profile::Hailo8L;
    let s = p.spec();
    let first = s.throttle[0].at_c;
    let mut npu = Npu::new(p, 3, 0);
    let engaged_at = heat_until_throttled(&mut npu, 45.0, 300);
    assert!(npu.temperature_c() >= first);
    // Sampled every 100 ms, the crossing lands within one sample of the threshold.
    assert!(npu.temperature_c() < first + 0.2, "{}", npu.temperature_c());
    let h = npu.health(engaged_at);
    assert_eq!(h.state, NpuState::Throttled);
    assert_eq!(h.clock_mhz, 300);
    assert_eq!(h.throttle_level, 1);

    // The overheat ends at 300 s; the part cools towards idle.
    let mut t = engaged_at;
    let mut held_between = 0;
    let mut prev = npu.temperature_c();
    loop {
        t += S / 10;
        npu.advance(t);
        let temp = npu.temperature_c();
        if npu.throttle_level() == 0 {
            assert!(temp < first - s.hysteresis_c, "released at {temp}");
            assert!(
                prev >= first - s.hysteresis_c - 0.2,
                "released late: {prev}"
            );
            break;
        }
        if t > 300 * S && temp < first {
            held_between += 1;
        }
        prev = temp;
        assert!(t < 2000 * S);
    }
    assert!(held_between > 10, "level 1 held while between 80 and 85 °C");
    assert_eq!(npu.health(t).state, NpuState::Ok);
}

#[test]
fn one_long_step_matches_many_short_ones_across_a_throttle_change() {
    // Busy and overheated, the part crosses 85 °C mid-inference; the power drop must happen
    // at the crossing whether the caller looks in once or every 10 ms.
    let p = Profile::Hailo8L;
    let ops = ops_for(p, 200.0);
    let start = |npu: &mut Npu| {
        npu.inject(
            Fault::Overheat {
                delta_c: 30.0,
                duration_us: 1_000_000_000,
            },
            0,
        );
        npu.infer(0, ops, 0).unwrap();
    };
    let mut once = Npu::new(p, 21, 0);
    start(&mut once);
    once.advance(100 * S);
    let mut often = Npu::new(p, 21, 0);
    start(&mut often);
    for t in (0..=100 * S).step_by(10_000) {
        often.advance(t);
    }
    assert_eq!(once.throttle_level(), 1);
    assert_eq!(often.throttle_level(), 1);
    let (a, b) = (once.temperature_c(), often.temperature_c());
    assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    let (ha, hb) = (once.health(100 * S), often.health(100 * S));
    assert!(
        (ha.power_w - hb.power_w).abs() < 1e-4,
        "{} vs {}",
        ha.power_w,
        hb.power_w
    );
}

#[test]
fn thermal_shutdown_fails_inferences_then_restarts_with_a_reset() {
    let p = Profile::Hailo8;
    let s = p.spec();
    let mut npu = Npu::new(p, 4, 0);
    npu.inject(
        Fault::Overheat {
            delta_c: 80.0,
            duration_us: 600 * 1_000_000,
        },
        0,
    );
    npu.advance(400 * S);
    let h = npu.health(400 * S);
    assert_eq!(h.state, NpuState::Overheated);
    assert_eq!(h.clock_mhz, 0);
    assert_eq!(h.resets, 1);
    let err = npu.infer(400 * S, 1000, 0).unwrap_err();
    assert!(matches!(err, NpuError::ThermalShutdown { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("hailo-8 NPU is in thermal shutdown"),
        "{err}"
    );

    // Overheat over: it cools below 100 °C, resets, and runs again.
    let mut t = 600 * S;
    while npu.state() == NpuState::Overheated {
        t += S / 10;
        npu.advance(t);
    }
    assert!(npu.temperature_c() < s.shutdown_c - s.hysteresis_c);
    assert_eq!(npu.state(), NpuState::Resetting);
    assert!(matches!(
        npu.infer(t, 1000, 0),
        Err(NpuError::Resetting { .. })
    ));
    let back = t + i64::try_from(s.reset_us).unwrap();
    assert!(npu.infer(back, 1000, 0).is_ok());
    let h = npu.health(back);
    assert_eq!(h.resets, 1);
    assert_eq!(h.failed_inferences, 2);
}

#[test]
fn idle_draws_idle_power_and_power_follows_utilisation() {
    for p in Profile::ALL {
        let s = p.spec();
        let mut npu = Npu::new(p, 11, 0);
        let h = npu.health(10 * S);
        assert_eq!(h.utilisation, 0.0);
        assert!((f64::from(h.power_w) - s.idle_power_w).abs() < 1e-6, "{p}");

        // Half a second of compute every second.
        let ops = ops_for(p, 0.5);
        for i in 0..60 {
            npu.infer(10 * S + i * S, ops, 0).unwrap();
        }
        let h = npu.health(70 * S);
        let u = f64::from(h.utilisation);
        assert!((u - 0.5).abs() < 0.03, "{p}: {u}");
        let expected = s.power_w(u, 1.0);
        assert!(
            (f64::from(h.power_w) - expected).abs() < 1e-4,
            "{p}: {} vs {expected}",
            h.power_w
        );
        assert!((h.fps - 1.0).abs() < 1e-3, "{p}: {}", h.fps);
    }
}

#[test]
fn throttled_power_scales_with_clock_to_the_alpha() {
    let p = Profile::DxM1;
    let s = p.spec();
    assert!(
        (s.power_w(1.0, 0.5) - (s.idle_power_w + (s.max_power_w - s.idle_power_w) * 0.25)).abs()
            < 1e-12
    );
    assert_eq!(s.power_w(0.0, 0.5), s.idle_power_w);
}

#[test]
fn ecc_errors_are_counted_injected_scheduled_and_at_random() {
    let mut npu = Npu::new(Profile::Rk3588, 8, 0);
    npu.set_schedule(
        "ecc@10s:count=2, ecc-rate@20s:per_hour=3600, ecc-rate@1020s:per_hour=0"
            .parse()
            .unwrap(),
    );
    npu.inject(Fault::Ecc { count: 3 }, S);
    assert_eq!(npu.health(5 * S).ecc_errors, 3);
    assert_eq!(npu.health(15 * S).ecc_errors, 5);
    // One a second for 1000 s: Poisson with mean 1000, σ ≈ 32.
    for t in (20..1100).step_by(7) {
        npu.advance(t * S);
    }
    let random = npu.health(1100 * S).ecc_errors - 5;
    assert!((870..=1130).contains(&random), "{random}");
    assert_eq!(
        npu.health(5000 * S).ecc_errors,
        random + 5,
        "rate 0 stops them"
    );
    assert!(
        npu.infer(5000 * S, 1000, 16).is_ok(),
        "corrected errors do not fail inferences"
    );
}

#[test]
fn reset_fails_inferences_for_the_reset_time_then_recovers() {
    let mut npu = Npu::new(Profile::Hailo8L, 2, 0);
    npu.infer(S, 1000, 16).unwrap();
    npu.inject(
        Fault::Reset {
            duration_us: Some(2_000_000),
        },
        10 * S,
    );
    assert_eq!(npu.health(10 * S).state, NpuState::Resetting);
    for t in [10 * S, 11 * S, 12 * S - 1] {
        let err = npu.infer(t, 1000, 16).unwrap_err();
        assert_eq!(
            err,
            NpuError::Resetting {
                profile: Profile::Hailo8L,
                until_us: 12 * S,
                resets: 1
            }
        );
        assert!(
            err.to_string().contains("hailo-8l NPU is resetting"),
            "{err}"
        );
    }
    assert!(npu.infer(12 * S, 1000, 16).is_ok());
    let h = npu.health(13 * S);
    assert_eq!((h.resets, h.failed_inferences, h.inferences), (1, 3, 2));
    assert_eq!(h.state, NpuState::Ok);
}

#[test]
fn scheduled_reset_uses_the_parts_reset_time() {
    let p = Profile::DxM1;
    let mut npu = Npu::new(p, 2, 5 * S);
    npu.set_schedule("reset@45s".parse().unwrap());
    assert!(npu.infer(50 * S - 1, 1000, 0).is_ok());
    assert!(npu.infer(50 * S, 1000, 0).is_err());
    let back = 50 * S + i64::try_from(p.spec().reset_us).unwrap();
    assert!(npu.infer(back - 1, 1000, 0).is_err());
    assert!(npu.infer(back, 1000, 0).is_ok());
    assert_eq!(npu.health(back).resets, 1);
}

#[test]
fn an_uncorrectable_error_fails_exactly_one_inference() {
    let mut npu = Npu::new(Profile::Hailo8, 6, 0);
    npu.inject(Fault::Uncorrectable, S);
    let err = npu.infer(2 * S, 1000, 16).unwrap_err();
    assert_eq!(
        err,
        NpuError::Uncorrectable {
            profile: Profile::Hailo8,
            at_us: 2 * S
        }
    );
    assert!(
        err.to_string().contains("uncorrectable memory error"),
        "{err}"
    );
    assert!(npu.infer(3 * S, 1000, 16).is_ok());
    assert!(npu.infer(4 * S, 1000, 16).is_ok());
    let h = npu.health(5 * S);
    assert_eq!((h.failed_inferences, h.inferences, h.resets), (1, 2, 0));
}

#[test]
fn health_percentiles_match_the_returned_latencies() {
    let mut npu = Npu::new(Profile::Rk3588, 12, 0);
    let mut lats = Vec::new();
    for i in 0..200u64 {
        // Varied model sizes so the latencies spread.
        let inf = npu
            .infer(i as i64 * 10_000, (i % 17) * 20_000_000, 128)
            .unwrap();
        lats.push(inf.latency_us);
    }
    lats.sort_unstable();
    let rank = |p: usize| lats[(p * lats.len()).div_ceil(100) - 1];
    let h = npu.health(2 * S);
    assert_eq!(
        (h.latency_p50_us, h.latency_p95_us, h.latency_p99_us),
        (rank(50), rank(95), rank(99))
    );
    assert!(h.latency_p50_us < h.latency_p99_us);
    let empty = npu.health(3 * S);
    assert_eq!((empty.latency_p50_us, empty.fps), (0, 0.0));
}

/// A fixed mixed workload, for determinism checks.
fn run(seed: u64) -> (Vec<Result<u32, String>>, Health) {
    let mut npu = Npu::new(Profile::Hailo8L, seed, 1_000);
    npu.set_schedule(
        "ecc-rate@0s:per_hour=500, overheat@20s:for=60s:delta_c=50, uncorrectable@30s, reset@90s"
            .parse()
            .unwrap(),
    );
    let out = (0..400)
        .map(|i| {
            npu.infer(
                i * 300_000,
                100_000_000 + (i as u64 % 5) * 1_000_000_000,
                512,
            )
            .map(|inf| inf.latency_us)
            .map_err(|e| e.to_string())
        })
        .collect();
    (out, npu.health(130 * S))
}

#[test]
fn same_seed_same_everything_other_seed_other_jitter() {
    let (a, ha) = run(77);
    let (b, hb) = run(77);
    assert_eq!(a, b);
    assert_eq!(ha, hb);
    assert!(ha.ecc_errors > 0 && ha.failed_inferences > 0 && ha.resets == 1);
    let (c, _) = run(78);
    assert_ne!(a, c);
}

#[test]
fn time_going_backwards_is_clamped() {
    let mut npu = Npu::new(Profile::Hailo8L, 1, 10 * S);
    npu.advance(20 * S);
    let t = npu.temperature_c();
    npu.advance(5 * S);
    assert_eq!(npu.now_us(), 20 * S);
    assert_eq!(npu.temperature_c(), t);
    let inf = npu.infer(0, 1_000_000, 0).unwrap();
    assert!(
        inf.latency_us < 1000,
        "submitted at the clamped time: {}",
        inf.latency_us
    );
    assert_eq!(npu.health(S).window_us, 10 * 1_000_000);
}

#[test]
fn back_to_back_submissions_queue() {
    let p = Profile::Hailo8L;
    let mut npu = Npu::new(p, 1, 0);
    let ops = ops_for(p, 0.01);
    let a = npu.infer(0, ops, 0).unwrap();
    let b = npu.infer(0, ops, 0).unwrap();
    assert!(b.latency_us > a.latency_us + 9_000, "{a:?} {b:?}");
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    profile: Profile,
    faults: FaultSchedule,
}

#[test]
fn schedules_load_from_toml() {
    let cfg: Config = toml::from_str(
        r#"
        profile = "rk3588"
        faults = [
            "ecc@10s",
            { at = "30s", kind = "overheat", for = "2m", delta_c = 40.0 },
            { at = "1h", kind = "ecc-rate", per_hour = 3.0 },
            { at = "45s", kind = "reset" },
        ]
        "#,
    )
    .unwrap();
    assert_eq!(cfg.profile, Profile::Rk3588);
    assert_eq!(
        cfg.faults.to_string(),
        "ecc@10s, overheat@30s:for=2m:delta_c=40, reset@45s, ecc-rate@1h:per_hour=3"
    );
    let one: Config =
        toml::from_str("profile = \"dx-m1\"\nfaults = \"ue@1s, reset@2s:for=1s\"").unwrap();
    assert_eq!(one.faults.len(), 2);

    let bad = toml::from_str::<Config>(
        "profile = \"hailo-8\"\nfaults = [{ at = \"1s\", kind = \"ecc\", colour = 1 }]",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(bad.contains("colour"), "{bad}");
    let bad = toml::from_str::<Config>("profile = \"hailo-9\"\nfaults = []")
        .err()
        .unwrap()
        .to_string();
    assert!(bad.contains("unknown NPU profile \"hailo-9\""), "{bad}");
    let bad =
        toml::from_str::<Config>("profile = \"hailo-8\"\nfaults = [\"overheat@1s:delta_c=900\"]")
            .err()
            .unwrap()
            .to_string();
    assert!(bad.contains("delta_c 900 is outside"), "{bad}");
}

#[test]
fn schedule_round_trips_through_serde() {
    let s: FaultSchedule = "ecc@1s:count=4, overheat@2s:for=3s:delta_c=12.5"
        .parse()
        .unwrap();
    #[derive(serde::Serialize, serde::Deserialize)]
    struct W {
        faults: FaultSchedule,
    }
    let text = toml::to_string(&W { faults: s.clone() }).unwrap();
    let back: W = toml::from_str(&text).unwrap();
    assert_eq!(back.faults, s);
    let f: ScheduledFault = "ue@0s".parse().unwrap();
    assert_eq!(f.fault, Fault::Uncorrectable);
}

#[derive(Debug, Clone)]
enum Op {
    Infer { dt: i64, ops: u64, bytes: usize },
    Advance { dt: i64 },
    Health { dt: i64 },
    Inject { dt: i64, fault: Fault },
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0u32..1000).prop_map(|count| Fault::Ecc { count }),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -10.0..1e6f64]
            .prop_map(|per_hour| Fault::EccRate { per_hour }),
        Just(Fault::Uncorrectable),
        (
            prop_oneof![Just(f64::NAN), Just(-5.0), 0.0..200.0f64],
            any::<u64>()
        )
            .prop_map(|(delta_c, duration_us)| Fault::Overheat {
                delta_c,
                duration_us
            }),
        proptest::option::of(any::<u64>()).prop_map(|duration_us| Fault::Reset { duration_us }),
    ]
}

fn dt() -> impl Strategy<Value = i64> {
    prop_oneof![
        -10_000_000i64..0,
        0i64..1_000,
        0i64..100_000_000,
        0i64..100_000_000_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (dt(), prop_oneof![0u64..10_000_000, any::<u64>()], 0usize..10_000_000)
            .prop_map(|(dt, ops, bytes)| Op::Infer { dt, ops, bytes }),
        2 => dt().prop_map(|dt| Op::Advance { dt }),
        2 => dt().prop_map(|dt| Op::Health { dt }),
        1 => (dt(), fault()).prop_map(|(dt, fault)| Op::Inject { dt, fault }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn temperature_stays_plausible_and_nothing_panics(
        profile in prop::sample::select(Profile::ALL.to_vec()),
        seed in any::<u64>(),
        start in -1_000_000_000_000_000_000i64..1_000_000_000_000_000_000,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let s = profile.spec();
        let low = s.ambient_c - 1e-9;
        let high = s.ambient_c + MAX_OVERHEAT_DELTA_C
            + s.max_power_w * s.thermal_resistance_c_per_w + 1e-9;
        let mut npu = Npu::new(profile, seed, start);
        let mut t = start;
        let mut last = npu.health(start);
        for op in ops {
            match op {
                Op::Infer { dt, ops, bytes } => {
                    t = t.saturating_add(dt);
                    let _ = npu.infer(t, ops, bytes);
                }
                Op::Advance { dt } => {
                    t = t.saturating_add(dt);
                    npu.advance(t);
                }
                Op::Inject { dt, fault } => {
                    t = t.saturating_add(dt);
                    npu.inject(fault, t);
                }
                Op::Health { dt } => {
                    t = t.saturating_add(dt);
                    let h = npu.health(t);
                    prop_assert!((0.0..=1.0).contains(&h.utilisation));
                    prop_assert!(h.fps >= 0.0 && h.fps.is_finite());
                    prop_assert!(f64::from(h.power_w) >= s.idle_power_w - 1e-4);
                    prop_assert!(f64::from(h.power_w) <= s.max_power_w + 1e-4);
                    prop_assert!(h.latency_p50_us <= h.latency_p95_us);
                    prop_assert!(h.latency_p95_us <= h.latency_p99_us);
                    prop_assert!(h.inferences >= last.inferences);
                    prop_assert!(h.failed_inferences >= last.failed_inferences);
                    prop_assert!(h.ecc_errors >= last.ecc_errors);
                    prop_assert!(h.resets >= last.resets);
                    last = h;
                }
            }
            let temp = npu.temperature_c();
            prop_assert!(temp.is_finite() && temp >= low && temp <= high, "{} °C", temp);
            prop_assert!(npu.now_us() >= start);
        }
    }
}
