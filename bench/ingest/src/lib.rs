//! The ingest benchmark's load and its bookkeeping.
//!
//! How this crate is laid out:
//! - this module: [`LoadSpec`], a deterministic telemetry load (devices spread over sites and
//!   lines, each sending numbered batches of several channels), and [`BROKER_MAX_PACKET`];
//! - `src/bin/load.rs` (`loopline-bench-load`): encodes the whole load into memory, then
//!   publishes it at QoS 1, as fast as the broker takes it or at a fixed rate;
//! - `src/bin/null.rs` (`loopline-bench-null`): the broker's ceiling, a subscriber that only
//!   counts what it receives;
//! - `src/bin/descriptor.rs` (`loopline-bench-descriptor`): writes the wire contract as a
//!   serialized `FileDescriptorSet`, from which the Python baseline builds its message classes.
//!
//! Invariants: a sample's value depends only on the seed, the device, the channel and the
//! sample's index in its device's stream, never on timing or publish order, so every
//! subscriber measured receives the same bytes (except in paced mode, where timestamps are the
//! publish time by design). Every batch passes `loopline-ingest`'s checks: its identity matches
//! its topic, `boot_id` is 32 lower-case hex digits, `seq` counts from 0 per device, and no
//! timestamp lies in the future.

use loopline_proto::pack::ChannelBuilder;
use loopline_proto::topic::Kind;
use loopline_proto::v1::{DeviceId, Quality, SCHEMA_VERSION, TelemetryBatch};

/// Largest MQTT packet the benchmark's clients accept: the same bound every Loopline client
/// uses, far above one batch of the default load (about 6 KB).
pub const BROKER_MAX_PACKET: u32 = 16 * 1024 * 1024;

/// Start of the unpaced load's sample timestamps: 2026-11-02T08:00:00Z, in the past (ingest
/// rejects future samples) and at the top of an hour, so a load shorter than an hour of
/// samples per device fills one hour partition per line.
pub const FIXED_START_US: i64 = 1_793_606_400_000_000;

/// What each sensor channel looks like: name, unit, resting level, amplitude and frequency of
/// its periodic part, noise amplitude, and the resolution its readings are rounded to (an ADC
/// step), which is what makes real sensor data compress as it does.
#[derive(Debug, Clone, Copy)]
struct SensorKind {
    name: &'static str,
    unit: &'static str,
    level: f64,
    amplitude: f64,
    hz: f64,
    noise: f64,
    resolution: f64,
}

const SENSORS: [SensorKind; 8] = [
    SensorKind {
        name: "vibration_x",
        unit: "mm/s",
        level: 0.0,
        amplitude: 2.5,
        hz: 24.7,
        noise: 0.4,
        resolution: 0.001,
    },
    SensorKind {
        name: "vibration_y",
        unit: "mm/s",
        level: 0.0,
        amplitude: 1.8,
        hz: 24.7,
        noise: 0.4,
        resolution: 0.001,
    },
    SensorKind {
        name: "vibration_z",
        unit: "mm/s",
        level: 0.0,
        amplitude: 0.9,
        hz: 49.4,
        noise: 0.3,
        resolution: 0.001,
    },
    SensorKind {
        name: "temperature",
        unit: "Cel",
        level: 61.0,
        amplitude: 0.8,
        hz: 0.002,
        noise: 0.05,
        resolution: 0.01,
    },
    SensorKind {
        name: "current",
        unit: "A",
        level: 12.0,
        amplitude: 0.6,
        hz: 50.0,
        noise: 0.1,
        resolution: 0.01,
    },
    SensorKind {
        name: "pressure",
        unit: "bar",
        level: 6.2,
        amplitude: 0.15,
        hz: 0.5,
        noise: 0.02,
        resolution: 0.001,
    },
    SensorKind {
        name: "speed",
        unit: "/min",
        level: 1480.0,
        amplitude: 3.0,
        hz: 0.1,
        noise: 0.5,
        resolution: 0.1,
    },
    SensorKind {
        name: "acoustic",
        unit: "dB",
        level: 72.0,
        amplitude: 4.0,
        hz: 3.0,
        noise: 1.5,
        resolution: 0.1,
    },
];

/// About one sample in this many is flagged `QUALITY_UNCERTAIN`, so the quality column is
/// present in a few channels, as on a real line.
const UNCERTAIN_ONE_IN: u64 = 20_000;

/// A deterministic load: `devices` devices spread round-robin over `sites` × `lines_per_site`
/// lines, each sending `messages_per_device` batches of `channels` channels × `samples`
/// samples taken every `sample_period_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    pub devices: usize,
    pub sites: usize,
    pub lines_per_site: usize,
    pub messages_per_device: u64,
    pub channels: usize,
    pub samples: usize,
    pub sample_period_us: i64,
    pub seed: u64,
}

/// One simulated device of a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: usize,
    pub id: DeviceId,
    /// 32 lower-case hex digits, derived from the seed and the device index.
    pub boot_id: String,
    pub topic: String,
}

impl LoadSpec {
    /// Samples in one batch.
    pub fn samples_per_message(&self) -> usize {
        self.channels * self.samples
    }

    /// Batches over all devices.
    pub fn messages(&self) -> u64 {
        self.devices as u64 * self.messages_per_device
    }

    /// Samples over all devices.
    pub fn total_samples(&self) -> u64 {
        self.messages() * self.samples_per_message() as u64
    }

    /// Time one batch spans, from its first sample to the first of the next.
    pub fn batch_span_us(&self) -> i64 {
        self.samples as i64 * self.sample_period_us
    }

    /// The devices, in index order. Device `i` sits on line `i mod lines`, so every line gets
    /// devices before any gets a second.
    pub fn devices(&self) -> Vec<Device> {
        let lines = (self.sites * self.lines_per_site).max(1);
        (0..self.devices)
            .map(|index| {
                let line = index % lines;
                let site = format!("site-{:02}", line / self.lines_per_site.max(1));
                let line_name = format!("line-{:02}", line % self.lines_per_site.max(1));
                let device = format!("dev-{index:04}");
                let id = DeviceId {
                    site,
                    line: line_name,
                    device,
                };
                let boot_id = format!(
                    "{:016x}{:016x}",
                    mix(self.seed ^ 0xb007, index as u64, 0),
                    mix(self.seed ^ 0xb007, index as u64, 1)
                );
                let topic = id.topic(Kind::Telemetry);
                Device {
                    index,
                    id,
                    boot_id,
                    topic,
                }
            })
            .collect()
    }

    /// Batch number `seq` of `device`, its first sample at `base_ts_us`. The values are those
    /// of samples `seq * samples ..` of the device's stream whatever the timestamps are.
    pub fn batch(&self, device: &Device, seq: u64, base_ts_us: i64) -> TelemetryBatch {
        let first = seq * self.samples as u64;
        let channels = (0..self.channels)
            .map(|c| {
                let kind = SENSORS[c % SENSORS.len()];
                let name = if c < SENSORS.len() {
                    kind.name.to_owned()
                } else {
                    format!("{}_{}", kind.name, c / SENSORS.len())
                };
                let mut builder =
                    ChannelBuilder::with_capacity(name, kind.unit, base_ts_us, self.samples);
                for k in 0..self.samples {
                    let n = first + k as u64;
                    let (value, quality) = self.sample(device.index, c, kind, n);
                    builder.push(
                        base_ts_us + k as i64 * self.sample_period_us,
                        value,
                        quality,
                    );
                }
                builder.finish()
            })
            .collect();
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            device: Some(device.id.clone()),
            boot_id: device.boot_id.clone(),
            seq,
            model_version: "bench-1".to_owned(),
            base_ts_us,
            channels,
            sealed_ts_us: base_ts_us + self.batch_span_us(),
            ..TelemetryBatch::default()
        }
    }

    /// Sample `n` of channel `channel` of device `device`.
    fn sample(&self, device: usize, channel: usize, kind: SensorKind, n: u64) -> (f32, Quality) {
        let key = ((device as u64) << 32) | channel as u64;
        let t = n as f64 * self.sample_period_us as f64 * 1e-6;
        // Devices differ a little in level and phase, as real machines do.
        let offset = unit(mix(self.seed, key, u64::MAX)) - 0.5;
        let phase = unit(mix(self.seed, key, u64::MAX - 1)) * std::f64::consts::TAU;
        let noise = (unit(mix(self.seed, key, n)) - 0.5) * 2.0 * kind.noise;
        let raw = kind.level * (1.0 + 0.02 * offset)
            + kind.amplitude * (std::f64::consts::TAU * kind.hz * t + phase).sin()
            + noise;
        let value = (raw / kind.resolution).round() * kind.resolution;
        let quality = if mix(self.seed ^ 0x9a11, key, n).is_multiple_of(UNCERTAIN_ONE_IN) {
            Quality::Uncertain
        } else {
            Quality::Good
        };
        (value as f32, quality)
    }
}

/// Wall-clock time, microseconds since the Unix epoch: the clock every figure of the
/// benchmark is stamped with, the same one ingest stamps `committed_at_us` with.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A well-mixed 64-bit hash of three words (SplitMix64's finaliser over each): the load's
/// only source of randomness, so any sample can be computed on its own.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x = seed;
    for word in [a, b] {
        x = x.wrapping_add(word).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// A hash mapped to [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopline_proto::Message;

    fn spec() -> LoadSpec {
        LoadSpec {
            devices: 5,
            sites: 2,
            lines_per_site: 2,
            messages_per_device: 3,
            channels: 8,
            samples: 125,
            sample_period_us: 1000,
            seed: 7,
        }
    }

    #[test]
    fn devices_spread_over_lines_with_distinct_boot_ids() {
        let devices = spec().devices();
        let lines: Vec<(&str, &str)> = devices
            .iter()
            .map(|d| (d.id.site.as_str(), d.id.line.as_str()))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("site-00", "line-00"),
                ("site-00", "line-01"),
                ("site-01", "line-00"),
                ("site-01", "line-01"),
                ("site-00", "line-00"),
            ]
        );
        assert_eq!(
            devices[4].topic,
            "loopline/v1/site-00/line-00/dev-0004/telemetry"
        );
        for d in &devices {
            assert_eq!(d.boot_id.len(), 32);
            assert!(
                d.boot_id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            d.id.validate().unwrap();
        }
        let mut ids: Vec<&str> = devices.iter().map(|d| d.boot_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 5);
    }

    #[test]
    fn a_batch_holds_the_configured_samples_at_the_configured_times() {
        let spec = spec();
        let device = &spec.devices()[1];
        let batch = spec.batch(device, 2, FIXED_START_US);
        assert_eq!(batch.sample_count(), 1000);
        assert_eq!(spec.total_samples(), 15_000);
        assert_eq!(batch.seq, 2);
        assert_eq!(batch.channels[3].sensor, "temperature");
        let samples: Vec<_> = batch.channels[0]
            .samples(batch.base_ts_us)
            .unwrap()
            .collect();
        assert_eq!(samples[0].ts_us, FIXED_START_US);
        assert_eq!(samples[124].ts_us, FIXED_START_US + 124_000);
        // Temperature stays near its level; vibration swings around zero.
        for s in batch.channels[3].samples(batch.base_ts_us).unwrap() {
            assert!((58.0..64.0).contains(&s.value), "{}", s.value);
        }
        let vib: Vec<f32> = samples.iter().map(|s| s.value).collect();
        assert!(vib.iter().any(|v| *v > 1.0) && vib.iter().any(|v| *v < -1.0));
    }

    #[test]
    fn values_depend_on_the_sample_index_and_not_on_the_timestamps() {
        let spec = spec();
        let device = &spec.devices()[0];
        let a = spec.batch(device, 1, FIXED_START_US);
        let b = spec.batch(device, 1, FIXED_START_US + 999_000_000);
        for (ca, cb) in a.channels.iter().zip(&b.channels) {
            assert_eq!(ca.values, cb.values);
            assert_eq!(ca.quality, cb.quality);
        }
        assert_eq!(
            a.encode_to_vec(),
            spec.batch(device, 1, FIXED_START_US).encode_to_vec()
        );
        assert_ne!(
            a.channels[0].values,
            spec.batch(device, 2, FIXED_START_US).channels[0].values
        );
    }

    #[test]
    fn more_channels_than_sensor_kinds_get_distinct_names() {
        let spec = LoadSpec {
            channels: 10,
            ..spec()
        };
        let batch = spec.batch(&spec.devices()[0], 0, FIXED_START_US);
        let names: Vec<&str> = batch.channels.iter().map(|c| c.sensor.as_str()).collect();
        assert_eq!(names[8], "vibration_x_1");
        assert_eq!(names[9], "vibration_y_1");
    }
}
