//! The simulated NPU: a pure state machine driven by the caller's clock.
//!
//! Every public call first brings the device up to the time it is given (`advance_to`):
//! scheduled faults fire at their own times, and between them the junction temperature is
//! integrated exactly ([`crate::thermal::step`]) over segments of constant power. A segment ends
//! where the NPU starts or stops computing, where an overheat or reset ends, and where the
//! temperature crosses a throttle threshold, so throttling engages at the right moment even
//! when calls are an hour apart.
//!
//! Power: the NPU draws `idle` while idle and `idle + (max − idle)·c^α` while computing at clock
//! fraction `c`, so its average over any window is exactly
//! `idle + (max − idle) × utilisation × c^α` ([`crate::POWER_CLOCK_EXPONENT`]).
//!
//! Latency: runtime dispatch + host link + `ops / (TOPS × efficiency × c)`, times a log-normal
//! jitter, plus any wait behind inferences still in flight. Only the compute part keeps the NPU
//! busy, as `hailortcli monitor` and rknpu's `load` count it: a tiny model leaves an NPU almost
//! idle even at a high inference rate.
//!
//! Invariants:
//! - time only moves forward: a `now_us` earlier than the latest seen is treated as the latest;
//! - an inference's outcome is decided when it is submitted; a reset or thermal shutdown that
//!   comes while it is still computing drops the rest of its work but not its result;
//! - counters (`inferences`, `failed_inferences`, `ecc_errors`, `resets`) only grow; window
//!   figures (`utilisation`, `fps`, `power_w`, percentiles) cover the time since the previous
//!   [`Npu::health`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fault::{Fault, FaultSchedule};
use crate::profile::{Profile, ProfileSpec};
use crate::stats::LatencyRing;
use crate::thermal::{self, Throttle, Transition};

/// Compute intervals the NPU can hold queued. When more are queued the newest two merge, which
/// counts the short runtime gap between them as busy.
const QUEUE: usize = 16;

/// Threshold crossings one call splits its time at. Only a device held at a threshold by
/// hours of saturated work reaches this; beyond it the ladder is updated at segment ends.
const MAX_CROSSINGS: u32 = 64;

/// Longest single inference: what the `u32` latency can express (71 minutes).
const MAX_SERVICE_US: i64 = u32::MAX as i64;

/// The result of a successful inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inference {
    /// Time from submission to result, including any wait behind earlier inferences, µs.
    pub latency_us: u32,
    /// NPU clock the inference ran at, MHz.
    pub clock_mhz: u32,
}

/// Why an inference failed on the simulated device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NpuError {
    /// An uncorrectable memory (ECC) error hit this inference.
    #[error(
        "{profile} NPU: uncorrectable memory error; the inference submitted at {at_us} µs failed"
    )]
    Uncorrectable {
        /// The part.
        profile: Profile,
        /// When the inference was submitted, µs.
        at_us: i64,
    },
    /// The device is resetting and accepts no work.
    #[error("{profile} NPU is resetting (reset {resets} since boot); back at {until_us} µs")]
    Resetting {
        /// The part.
        profile: Profile,
        /// When the device is back, µs.
        until_us: i64,
        /// Resets since boot, this one included.
        resets: u32,
    },
    /// The device reached its shutdown temperature and is off until it cools down.
    #[error(
        "{profile} NPU is in thermal shutdown at {temperature_c:.1} °C (shuts down at {shutdown_c} °C, restarts below {restart_c} °C)"
    )]
    ThermalShutdown {
        /// The part.
        profile: Profile,
        /// Junction temperature now, °C.
        temperature_c: f32,
        /// Shutdown temperature, °C.
        shutdown_c: f32,
        /// Temperature below which it restarts, °C.
        restart_c: f32,
    },
}

/// What the device is doing, as the vendors' monitors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NpuState {
    /// Running at full clock.
    Ok,
    /// Running with the throttle ladder engaged.
    Throttled,
    /// Resetting after a fault or a thermal shutdown; inferences fail.
    Resetting,
    /// Shut down for temperature; inferences fail until it cools.
    Overheated,
}

impl NpuState {
    /// Lower-case name for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            NpuState::Ok => "ok",
            NpuState::Throttled => "throttled",
            NpuState::Resetting => "resetting",
            NpuState::Overheated => "overheated",
        }
    }
}

/// A health report: window figures since the previous report, instantaneous readings, and
/// counters since boot.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Health {
    /// Fraction of the window the NPU spent computing, 0..1.
    pub utilisation: f32,
    /// Successful inferences per second over the window.
    pub fps: f32,
    /// Latency percentiles of the window's inferences (the most recent
    /// [`crate::LATENCY_RING`] of them), µs; 0 when there were none.
    pub latency_p50_us: u32,
    /// 95th percentile latency, µs.
    pub latency_p95_us: u32,
    /// 99th percentile latency, µs.
    pub latency_p99_us: u32,
    /// Junction temperature now, °C.
    pub temperature_c: f32,
    /// Average power over the window (now, for an empty window), W.
    pub power_w: f32,
    /// NPU clock now, MHz; 0 while the device is down.
    pub clock_mhz: u32,
    /// Throttle level now: 0 = none, higher = slower.
    pub throttle_level: u32,
    /// State now.
    pub state: NpuState,
    /// Corrected ECC errors since boot.
    pub ecc_errors: u64,
    /// Device resets since boot, thermal shutdowns included.
    pub resets: u32,
    /// Inferences that failed since boot.
    pub failed_inferences: u64,
    /// Inferences that succeeded since boot.
    pub inferences: u64,
    /// Length of the window, µs.
    pub window_us: u64,
}

/// A simulated NPU. See the module documentation for the model.
#[derive(Debug, Clone)]
pub struct Npu {
    profile: Profile,
    spec: &'static ProfileSpec,
    rng: ChaCha8Rng,
    spare_normal: Option<f64>,
    start_us: i64,
    /// Time up to which the state is integrated; the latest time seen.
    now_us: i64,
    temp_c: f64,
    throttle: Throttle,
    /// Queued compute intervals `[start, end)` in time order: a ring of `queue_len` from
    /// `queue_head`.
    queue: [(i64, i64); QUEUE],
    queue_head: usize,
    queue_len: usize,
    /// When the runtime is free to start the next inference.
    pipeline_until: i64,
    /// Ambient rise and its end.
    overheat: Option<(f64, i64)>,
    reset_until: Option<i64>,
    ecc_per_us: f64,
    pending_uncorrectable: u32,
    /// Absolute fault times and faults, in time order; `schedule_next` is the next to fire.
    schedule: Vec<(i64, Fault)>,
    schedule_next: usize,
    inferences: u64,
    failed: u64,
    ecc_errors: u64,
    resets: u32,
    window_start_us: i64,
    window_busy_us: i64,
    window_energy_j: f64,
    window_ok: u64,
    latencies: LatencyRing,
}

impl Npu {
    /// A powered-up, idle device at `start_us`, its junction at the idle steady state.
    pub fn new(profile: Profile, seed: u64, start_us: i64) -> Npu {
        let spec = profile.spec();
        let mut npu = Npu {
            profile,
            spec,
            rng: ChaCha8Rng::seed_from_u64(seed),
            spare_normal: None,
            start_us,
            now_us: start_us,
            temp_c: spec.steady_state_c(spec.idle_power_w),
            throttle: Throttle::new(spec),
            queue: [(0, 0); QUEUE],
            queue_head: 0,
            queue_len: 0,
            pipeline_until: start_us,
            overheat: None,
            reset_until: None,
            ecc_per_us: 0.0,
            pending_uncorrectable: 0,
            schedule: Vec::new(),
            schedule_next: 0,
            inferences: 0,
            failed: 0,
            ecc_errors: 0,
            resets: 0,
            window_start_us: start_us,
            window_busy_us: 0,
            window_energy_j: 0.0,
            window_ok: 0,
            latencies: LatencyRing::new(),
        };
        npu.throttle.update(spec, npu.temp_c);
        npu
    }

    /// The part this device simulates.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The part's numbers.
    pub fn spec(&self) -> &'static ProfileSpec {
        self.spec
    }

    /// The latest time the device has seen, µs.
    pub fn now_us(&self) -> i64 {
        self.now_us
    }

    /// Junction temperature as of [`Npu::now_us`], °C.
    pub fn temperature_c(&self) -> f64 {
        self.temp_c
    }

    /// Throttle level as of [`Npu::now_us`] (0 = none).
    pub fn throttle_level(&self) -> u32 {
        self.throttle.level
    }

    /// State as of [`Npu::now_us`].
    pub fn state(&self) -> NpuState {
        if self.throttle.shutdown {
            NpuState::Overheated
        } else if self.reset_until.is_some() {
            NpuState::Resetting
        } else if self.throttle.level > 0 {
            NpuState::Throttled
        } else {
            NpuState::Ok
        }
    }

    /// NPU clock as of [`Npu::now_us`], MHz; 0 while the device is down.
    pub fn clock_mhz(&self) -> u32 {
        if self.is_down() {
            0
        } else {
            self.running_clock_mhz()
        }
    }

    /// Runs one inference of `ops` operations on `input_bytes` of input, submitted at
    /// `now_us`.
    pub fn infer(
        &mut self,
        now_us: i64,
        ops: u64,
        input_bytes: usize,
    ) -> Result<Inference, NpuError> {
        self.advance_to(now_us);
        let now = self.now_us;
        if self.throttle.shutdown {
            self.failed += 1;
            return Err(NpuError::ThermalShutdown {
                profile: self.profile,
                temperature_c: self.temp_c as f32,
                shutdown_c: self.spec.shutdown_c as f32,
                restart_c: (self.spec.shutdown_c - self.spec.hysteresis_c) as f32,
            });
        }
        if let Some(until_us) = self.reset_until {
            self.failed += 1;
            return Err(NpuError::Resetting {
                profile: self.profile,
                until_us,
                resets: self.resets,
            });
        }
        if self.pending_uncorrectable > 0 {
            self.pending_uncorrectable -= 1;
            self.failed += 1;
            return Err(NpuError::Uncorrectable {
                profile: self.profile,
                at_us: now,
            });
        }

        let c = self.spec.clock_fraction(self.throttle.level);
        let jitter = self.jitter();
        let setup = to_us(self.spec.setup_us(input_bytes) * jitter);
        let compute = to_us(self.spec.compute_us(ops, c) * jitter);
        let service = setup.saturating_add(compute).clamp(1, MAX_SERVICE_US);
        let compute = compute.min(service - setup.min(service));
        let start = now.max(self.pipeline_until);
        let end = start.saturating_add(service);
        if compute > 0 {
            self.enqueue(end - compute, end);
        }
        self.pipeline_until = end;

        let latency_us = u32::try_from(end - now).unwrap_or(u32::MAX);
        self.latencies.record(latency_us);
        self.inferences += 1;
        self.window_ok += 1;
        Ok(Inference {
            latency_us,
            clock_mhz: self.running_clock_mhz(),
        })
    }

    /// Brings temperature, throttling, faults and accounting up to `now_us` without an
    /// inference.
    pub fn advance(&mut self, now_us: i64) {
        self.advance_to(now_us);
    }

    /// Makes `fault` happen at `now_us` (values out of bounds are clamped, see
    /// [`Fault::bounded`]).
    pub fn inject(&mut self, fault: Fault, now_us: i64) {
        self.advance_to(now_us);
        self.apply(fault.bounded(), self.now_us);
    }

    /// Replaces the fault schedule. Times are relative to `start_us` given to [`Npu::new`];
    /// entries already in the past fire on the next call.
    pub fn set_schedule(&mut self, schedule: FaultSchedule) {
        self.schedule = schedule
            .faults()
            .iter()
            .map(|f| {
                let at = i64::try_from(f.at.as_micros()).unwrap_or(i64::MAX);
                (self.start_us.saturating_add(at), f.fault.bounded())
            })
            .collect();
        self.schedule_next = 0;
    }

    /// Reports health at `now_us` and opens a new window.
    pub fn health(&mut self, now_us: i64) -> Health {
        self.advance_to(now_us);
        let elapsed_us = self.now_us.saturating_sub(self.window_start_us);
        let (utilisation, power_w, fps) = if elapsed_us > 0 {
            let secs = elapsed_us as f64 / 1e6;
            (
                self.window_busy_us as f64 / elapsed_us as f64,
                self.window_energy_j / secs,
                self.window_ok as f64 / secs,
            )
        } else {
            let busy = self.computing_now();
            let c = self.spec.clock_fraction(self.throttle.level);
            (0.0, self.power_now(busy, c), 0.0)
        };
        let p = self.latencies.take_window();
        self.window_start_us = self.now_us;
        self.window_busy_us = 0;
        self.window_energy_j = 0.0;
        self.window_ok = 0;
        Health {
            utilisation: utilisation.clamp(0.0, 1.0) as f32,
            fps: fps as f32,
            latency_p50_us: p.p50_us,
            latency_p95_us: p.p95_us,
            latency_p99_us: p.p99_us,
            temperature_c: self.temp_c as f32,
            power_w: power_w as f32,
            clock_mhz: self.clock_mhz(),
            throttle_level: self.throttle.level,
            state: self.state(),
            ecc_errors: self.ecc_errors,
            resets: self.resets,
            failed_inferences: self.failed,
            inferences: self.inferences,
            window_us: u64::try_from(elapsed_us).unwrap_or(0),
        }
    }

    fn is_down(&self) -> bool {
        self.throttle.shutdown || self.reset_until.is_some()
    }

    fn running_clock_mhz(&self) -> u32 {
        let c = self.spec.clock_fraction(self.throttle.level);
        // +0.5 and truncate: `round` is a library call on targets without SSE4.1.
        (f64::from(self.spec.clock_mhz) * c + 0.5) as u32
    }

    fn power_now(&self, busy: bool, clock_fraction: f64) -> f64 {
        self.spec
            .power_w(if busy { 1.0 } else { 0.0 }, clock_fraction)
    }

    fn computing_now(&self) -> bool {
        self.queue_len > 0 && {
            let (s, e) = self.queue[self.queue_head];
            s <= self.now_us && self.now_us < e
        }
    }

    /// Log-normal multiplicative jitter with mean 1.
    fn jitter(&mut self) -> f64 {
        let sigma = self.spec.jitter_sigma;
        let z = self.normal().clamp(-6.0, 6.0);
        (sigma * z - sigma * sigma / 2.0).exp()
    }

    /// A standard normal draw (Marsaglia's polar method: no trigonometry; the second value is
    /// kept for the next call).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.rng.random::<f64>() - 1.0;
            let v = 2.0 * self.rng.random::<f64>() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let m = (-2.0 * s.ln() / s).sqrt();
                self.spare_normal = Some(v * m);
                return u * m;
            }
        }
    }

    /// A Poisson draw with mean `mean`: Knuth's product method for small means, the normal
    /// approximation above 30.
    fn poisson(&mut self, mean: f64) -> u64 {
        if mean.is_nan() || mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            let z = self.normal();
            return (mean + mean.sqrt() * z + 0.5).max(0.0) as u64;
        }
        let limit = (-mean).exp();
        let mut k = 0;
        let mut p = self.rng.random::<f64>();
        while p > limit {
            k += 1;
            p *= self.rng.random::<f64>();
        }
        k
    }

    fn enqueue(&mut self, start: i64, end: i64) {
        if self.queue_len == QUEUE {
            let last = (self.queue_head + QUEUE - 1) % QUEUE;
            self.queue[last].1 = end;
            return;
        }
        let slot = (self.queue_head + self.queue_len) % QUEUE;
        self.queue[slot] = (start, end);
        self.queue_len += 1;
    }

    fn clear_work(&mut self, at_us: i64) {
        self.queue_len = 0;
        self.pipeline_until = at_us;
    }

    fn next_event_us(&self) -> Option<i64> {
        let mut next = self.schedule.get(self.schedule_next).map(|&(t, _)| t);
        for t in [self.overheat.map(|(_, t)| t), self.reset_until]
            .into_iter()
            .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    fn advance_to(&mut self, now_us: i64) {
        let target = now_us.max(self.now_us);
        loop {
            let event = self.next_event_us().filter(|&t| t <= target);
            let goal = event.unwrap_or(target);
            self.integrate(goal);
            if self.now_us < goal {
                // Integration stopped at a new event (a restart after cooling): look again.
                continue;
            }
            match event {
                Some(t) => self.fire_events(t.max(self.now_us)),
                None => break,
            }
        }
    }

    /// Fires everything due at or before `t`; consumes at least one event.
    fn fire_events(&mut self, t: i64) {
        if self.overheat.is_some_and(|(_, until)| until <= t) {
            self.overheat = None;
        }
        if self.reset_until.is_some_and(|until| until <= t) {
            self.reset_until = None;
        }
        while let Some(&(at, fault)) = self.schedule.get(self.schedule_next) {
            if at > t {
                break;
            }
            self.schedule_next += 1;
            self.apply(fault, t);
        }
    }

    fn apply(&mut self, fault: Fault, t: i64) {
        match fault {
            Fault::Ecc { count } => self.ecc_errors += u64::from(count),
            Fault::EccRate { per_hour } => self.ecc_per_us = per_hour / 3.6e9,
            Fault::Uncorrectable => self.pending_uncorrectable += 1,
            Fault::Overheat {
                delta_c,
                duration_us,
            } => {
                let until = t.saturating_add(i64::try_from(duration_us).unwrap_or(i64::MAX));
                self.overheat = Some((delta_c, until));
            }
            Fault::Reset { duration_us } => {
                let d = duration_us.unwrap_or(self.spec.reset_us);
                let until = t.saturating_add(i64::try_from(d).unwrap_or(i64::MAX));
                self.resets = self.resets.saturating_add(1);
                self.reset_until = Some(self.reset_until.map_or(until, |u| u.max(until)));
                self.clear_work(t);
            }
        }
    }

    /// Integrates temperature and accounting from `now_us` towards `end`, with no event in
    /// between. Stops early, at the moment it happens, when cooling down after a thermal
    /// shutdown schedules the restart.
    fn integrate(&mut self, end: i64) {
        if end <= self.now_us {
            return;
        }
        let from = self.now_us;
        let spec = self.spec;
        let tau_s = spec.thermal_tau_s();
        let r_th = spec.thermal_resistance_c_per_w;
        let ambient = spec.ambient_c + self.overheat.map_or(0.0, |(d, _)| d);
        let idle_target = ambient + spec.idle_power_w * r_th;
        let mut busy_power = self.power_now(true, spec.clock_fraction(self.throttle.level));
        let mut crossings = 0;
        while self.now_us < end {
            let now = self.now_us;
            while self.queue_len > 0 && self.queue[self.queue_head].1 <= now {
                self.queue_head = (self.queue_head + 1) % QUEUE;
                self.queue_len -= 1;
            }
            let (busy, seg_end) = if self.queue_len == 0 {
                (false, end)
            } else {
                let (s, e) = self.queue[self.queue_head];
                if s <= now {
                    (true, e.min(end))
                } else {
                    (false, s.min(end))
                }
            };
            let (power, target) = if busy {
                (busy_power, ambient + busy_power * r_th)
            } else {
                (spec.idle_power_w, idle_target)
            };

            // Within the band nothing changes; the path from here to `temp_end` is monotonic,
            // so it leaves the band only if `temp_end` lies outside it.
            let (low, high) = self.throttle.band();
            let mut stop = seg_end;
            let mut temp_end = thermal::step(self.temp_c, target, secs(seg_end - now), tau_s);
            let leaves = temp_end < low || temp_end >= high;
            if leaves && crossings < MAX_CROSSINGS {
                let threshold = if temp_end >= high { high } else { low };
                if let Some(dt_s) = thermal::time_to_reach(self.temp_c, target, threshold, tau_s) {
                    let cross = now.saturating_add(((dt_s * 1e6).ceil() as i64).max(1));
                    if cross < seg_end {
                        stop = cross;
                        temp_end = thermal::step(self.temp_c, target, secs(stop - now), tau_s);
                        crossings += 1;
                    }
                }
            }

            let dt = stop - now;
            self.temp_c = temp_end;
            self.window_energy_j += power * secs(dt);
            if busy {
                self.window_busy_us += dt;
            }
            self.now_us = stop;
            if leaves {
                let level = self.throttle.level;
                let transition = self.throttle.update(spec, self.temp_c);
                if self.throttle.level != level {
                    busy_power = self.power_now(true, spec.clock_fraction(self.throttle.level));
                }
                match transition {
                    Transition::Shutdown => {
                        self.resets = self.resets.saturating_add(1);
                        self.clear_work(stop);
                    }
                    Transition::CooledDown => {
                        let until = stop.saturating_add(i64::try_from(spec.reset_us).unwrap_or(0));
                        self.reset_until = Some(self.reset_until.map_or(until, |u| u.max(until)));
                        break;
                    }
                    Transition::None => {}
                }
            }
        }
        if self.ecc_per_us > 0.0 {
            let mean = self.ecc_per_us * (self.now_us - from) as f64;
            let errors = self.poisson(mean);
            self.ecc_errors = self.ecc_errors.saturating_add(errors);
        }
    }
}

/// µs as seconds.
fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// A non-negative µs figure as whole µs, saturating.
fn to_us(us: f64) -> i64 {
    if us.is_finite() && us > 0.0 {
        // +0.5 and truncate rounds a positive value; `as` saturates at i64::MAX.
        (us + 0.5) as i64
    } else {
        0
    }
}
