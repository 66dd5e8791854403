//! Columnar packing of one sensor's samples in a [`Channel`].
//!
//! Timestamps are delta-coded: the first delta is relative to the batch's `base_ts_us`, each
//! later one to the sample before it. Quality is a column of `Quality` numbers that may be left
//! empty when every sample is good, which is the common case and then costs nothing on the wire.
//!
//! A receiver must not trust the columns: [`Channel::samples`] checks lengths, overflow and
//! quality codes before it yields anything.

use crate::v1::{Channel, Quality, TelemetryBatch};

/// One unpacked sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Microseconds since the Unix epoch, UTC.
    pub ts_us: i64,
    pub value: f32,
    pub quality: Quality,
}

/// Why a channel's columns cannot be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("channel {sensor:?}: {timestamps} timestamps but {values} values")]
    ValueCount {
        sensor: String,
        timestamps: usize,
        values: usize,
    },
    #[error("channel {sensor:?}: {timestamps} timestamps but {quality} quality flags")]
    QualityCount {
        sensor: String,
        timestamps: usize,
        quality: usize,
    },
    #[error("channel {sensor:?}: timestamp overflows at sample {index}")]
    TimestampOverflow { sensor: String, index: usize },
    #[error("channel {sensor:?}: unknown quality code {code} at sample {index}")]
    UnknownQuality {
        sensor: String,
        code: u32,
        index: usize,
    },
}

/// Builds a [`Channel`] sample by sample.
///
/// ```
/// use loopline_proto::pack::ChannelBuilder;
/// use loopline_proto::v1::Quality;
///
/// let base = 1_795_946_400_000_000; // µs since the epoch
/// let mut builder = ChannelBuilder::new("temperature", "Cel", base);
/// builder.push(base, 21.5, Quality::Good);
/// builder.push(base + 1_000, 21.75, Quality::Uncertain);
/// let channel = builder.finish();
/// assert_eq!(channel.ts_delta_us, [0, 1_000]); // delta-coded
///
/// let samples: Vec<_> = channel.samples(base)?.collect();
/// assert_eq!(samples[1].ts_us, base + 1_000);
/// assert_eq!(samples[1].value, 21.75);
/// assert_eq!(samples[1].quality, Quality::Uncertain);
/// # Ok::<(), loopline_proto::pack::PackError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChannelBuilder {
    channel: Channel,
    last_ts_us: i64,
    all_good: bool,
}

impl ChannelBuilder {
    /// Starts a channel whose first delta will be relative to `base_ts_us`.
    pub fn new(sensor: impl Into<String>, unit: impl Into<String>, base_ts_us: i64) -> Self {
        ChannelBuilder {
            channel: Channel {
                sensor: sensor.into(),
                unit: unit.into(),
                ..Channel::default()
            },
            last_ts_us: base_ts_us,
            all_good: true,
        }
    }

    /// Starts a channel with room for `capacity` samples.
    pub fn with_capacity(
        sensor: impl Into<String>,
        unit: impl Into<String>,
        base_ts_us: i64,
        capacity: usize,
    ) -> Self {
        let mut builder = Self::new(sensor, unit, base_ts_us);
        builder.channel.ts_delta_us.reserve(capacity);
        builder.channel.values.reserve(capacity);
        builder
    }

    /// Appends a sample. Timestamps may go backwards (a clock step); the delta is signed.
    pub fn push(&mut self, ts_us: i64, value: f32, quality: Quality) {
        self.channel
            .ts_delta_us
            .push(ts_us.wrapping_sub(self.last_ts_us));
        self.last_ts_us = ts_us;
        self.channel.values.push(value);
        if quality != Quality::Good && self.all_good {
            // Materialise the column only once a sample is not good.
            self.all_good = false;
            self.channel
                .quality
                .resize(self.channel.values.len() - 1, Quality::Good as u32);
        }
        if !self.all_good {
            self.channel.quality.push(quality as u32);
        }
    }

    /// Samples pushed so far.
    pub fn len(&self) -> usize {
        self.channel.values.len()
    }

    /// Whether no sample was pushed.
    pub fn is_empty(&self) -> bool {
        self.channel.values.is_empty()
    }

    /// The finished channel.
    pub fn finish(self) -> Channel {
        self.channel
    }
}

impl Channel {
    /// Checks the columns and returns an iterator over the samples.
    pub fn samples(&self, base_ts_us: i64) -> Result<Samples<'_>, PackError> {
        let n = self.ts_delta_us.len();
        if self.values.len() != n {
            return Err(PackError::ValueCount {
                sensor: self.sensor.clone(),
                timestamps: n,
                values: self.values.len(),
            });
        }
        if !self.quality.is_empty() && self.quality.len() != n {
            return Err(PackError::QualityCount {
                sensor: self.sensor.clone(),
                timestamps: n,
                quality: self.quality.len(),
            });
        }
        let mut ts = base_ts_us;
        for (index, delta) in self.ts_delta_us.iter().enumerate() {
            ts = ts
                .checked_add(*delta)
                .ok_or_else(|| PackError::TimestampOverflow {
                    sensor: self.sensor.clone(),
                    index,
                })?;
        }
        if let Some((index, &code)) =
            self.quality.iter().enumerate().find(|(_, code)| {
                i32::try_from(**code).map_or(true, |c| Quality::try_from(c).is_err())
            })
        {
            return Err(PackError::UnknownQuality {
                sensor: self.sensor.clone(),
                code,
                index,
            });
        }
        Ok(Samples {
            channel: self,
            next_ts_us: base_ts_us,
            index: 0,
        })
    }
}

/// Iterator over a checked channel's samples, in the order they were packed.
#[derive(Debug, Clone)]
pub struct Samples<'a> {
    channel: &'a Channel,
    next_ts_us: i64,
    index: usize,
}

impl Iterator for Samples<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        let i = self.index;
        let delta = *self.channel.ts_delta_us.get(i)?;
        // `samples()` proved that no prefix sum overflows.
        self.next_ts_us = self.next_ts_us.wrapping_add(delta);
        self.index += 1;
        let quality = self
            .channel
            .quality
            .get(i)
            .and_then(|code| Quality::try_from(*code as i32).ok())
            .unwrap_or(Quality::Good);
        Some(Sample {
            ts_us: self.next_ts_us,
            value: self.channel.values[i],
            quality,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.channel.ts_delta_us.len() - self.index;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Samples<'_> {}

impl TelemetryBatch {
    /// Number of samples over all channels, as the columns claim (unchecked).
    pub fn sample_count(&self) -> usize {
        self.channels.iter().map(|c| c.values.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quality_strategy() -> impl Strategy<Value = Quality> {
        prop_oneof![
            8 => Just(Quality::Good),
            1 => Just(Quality::Uncertain),
            1 => Just(Quality::Bad),
        ]
    }

    proptest! {
        #[test]
        fn packs_and_unpacks_exactly(
            base in -1_000_000_000_000_000i64..4_000_000_000_000_000i64,
            samples in proptest::collection::vec(
                (-10_000_000i64..10_000_000, any::<f32>(), quality_strategy()), 0..200),
        ) {
            let mut builder = ChannelBuilder::new("vibration", "mm/s", base);
            let mut expected = Vec::new();
            let mut ts = base;
            for (step, value, quality) in samples {
                ts += step;
                builder.push(ts, value, quality);
                expected.push((ts, value.to_bits(), quality));
            }
            let channel = builder.finish();
            if expected.iter().all(|(_, _, q)| *q == Quality::Good) {
                prop_assert!(channel.quality.is_empty());
            }
            let got: Vec<_> = channel
                .samples(base)
                .unwrap()
                .map(|s| (s.ts_us, s.value.to_bits(), s.quality))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn rejects_inconsistent_columns() {
        let mut channel = ChannelBuilder::new("t", "Cel", 0).finish();
        channel.ts_delta_us = vec![1, 1];
        channel.values = vec![1.0];
        assert!(matches!(
            channel.samples(0),
            Err(PackError::ValueCount {
                timestamps: 2,
                values: 1,
                ..
            })
        ));
        channel.values = vec![1.0, 2.0];
        channel.quality = vec![0];
        assert!(matches!(
            channel.samples(0),
            Err(PackError::QualityCount { .. })
        ));
        channel.quality = vec![0, 7];
        assert!(matches!(
            channel.samples(0),
            Err(PackError::UnknownQuality {
                code: 7,
                index: 1,
                ..
            })
        ));
        channel.quality.clear();
        channel.ts_delta_us = vec![i64::MAX, 1];
        assert!(matches!(
            channel.samples(1),
            Err(PackError::TimestampOverflow { index: 0, .. })
        ));
    }
}
