//! Cutting a device's samples into the windows its agent scored, and their features.
//!
//! Invariants:
//! - The agent's windows are runs of `window_samples` consecutive samples counted from the
//!   first sample of its boot, and sample `k` of a boot is stamped `t0 + k·10⁶/rate`. So the
//!   window grid of a boot is fixed by one window start: an `inference` row's `window_start`
//!   when the boot has one (the trainer's windows are then exactly the agent's), the first
//!   sample read otherwise. A sample's window is `floor(k / window_samples)`, with `k` its
//!   index from that anchor.
//! - A window is used only when complete: `window_samples` consecutive sample indices, every
//!   channel present at each, all with quality good (0). A window cut by the ends of the range
//!   or of the boot is not a window at all; one with a hole inside counts as a gap, one with
//!   an uncertain or bad sample (or a non-finite value) as bad quality.
//! - Features come from [`FeatureLayout::extract`], the function the agent runs.

use loopline_model::FeatureLayout;

use crate::error::{Result, TrainError};
use crate::lake::BootSeries;

/// One complete, good window of one device boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Index into the caller's series list.
    pub series: usize,
    /// First sample's timestamp.
    pub start_us: i64,
    /// Last sample's timestamp.
    pub end_us: i64,
    /// One feature vector per layout asked for, in the same order.
    pub features: Vec<Vec<f32>>,
}

/// What cutting produced.
#[derive(Debug, Default)]
pub struct Cut {
    pub windows: Vec<Window>,
    /// Windows left out for an uncertain or bad sample (or a non-finite value).
    pub bad_quality: u64,
    /// Windows left out for missing samples inside them.
    pub gaps: u64,
}

/// A feature layout and, for each of its channels, the index of that channel in the series.
#[derive(Debug, Clone)]
pub struct LayoutIndex {
    pub layout: FeatureLayout,
    pub channels: Vec<usize>,
}

impl LayoutIndex {
    /// `layout`'s channels looked up in `available` (the series' channel order).
    pub fn new(layout: FeatureLayout, available: &[String]) -> Result<Self, String> {
        let channels = layout
            .channels()
            .iter()
            .map(|c| {
                available
                    .iter()
                    .position(|a| a == c)
                    .ok_or_else(|| format!("channel {c:?} is not read"))
            })
            .collect::<Result<_, _>>()?;
        Ok(LayoutIndex { layout, channels })
    }
}

/// The sample rate of a series, in whole hertz, from the median spacing of its first
/// channel's timestamps; `None` with fewer than two samples.
pub fn sample_rate_hz(series: &BootSeries) -> Option<u32> {
    let ts = &series.channels.first()?.ts;
    let mut steps: Vec<i64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0)
        .collect();
    if steps.is_empty() {
        return None;
    }
    let mid = steps.len() / 2;
    let (_, median, _) = steps.select_nth_unstable(mid);
    let rate = (1e6 / *median as f64).round();
    (rate >= 1.0).then_some(rate as u32)
}

/// Cuts `series` (index `index` in the caller's list) into windows of `window_samples`
/// samples at `rate_hz`, on the grid through `anchor_us`, and extracts each layout's features.
pub fn cut(
    index: usize,
    series: &BootSeries,
    rate_hz: u32,
    window_samples: usize,
    anchor_us: i64,
    layouts: &[LayoutIndex],
    out: &mut Cut,
) -> Result<()> {
    let n = window_samples.max(1);
    let Some(timeline) = series.channels.first().map(|c| &c.ts) else {
        return Ok(());
    };
    // For each channel, the position of each timeline sample in it (None: missing).
    let positions: Vec<Vec<Option<usize>>> = series
        .channels
        .iter()
        .map(|c| {
            let mut j = 0;
            timeline
                .iter()
                .map(|&t| {
                    while j < c.ts.len() && c.ts[j] < t {
                        j += 1;
                    }
                    (j < c.ts.len() && c.ts[j] == t).then_some(j)
                })
                .collect()
        })
        .collect();
    let rate = f64::from(rate_hz);
    let k_of = |t: i64| ((t - anchor_us) as f64 * rate / 1e6).round() as i64;
    let interval_us = 1e6 / rate;
    let mut buffers: Vec<Vec<f32>> = vec![Vec::with_capacity(n); series.channels.len()];

    // Group timeline samples by window index.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for i in 1..=timeline.len() {
        if i == timeline.len()
            || k_of(timeline[i]).div_euclid(n as i64) != k_of(timeline[start]).div_euclid(n as i64)
        {
            groups.push((start, i));
            start = i;
        }
    }
    let last_group = groups.len().saturating_sub(1);
    for (g, &(lo, hi)) in groups.iter().enumerate() {
        let k_lo = k_of(timeline[lo]);
        let complete = hi - lo == n
            && k_of(timeline[hi - 1]) - k_lo == n as i64 - 1
            && k_lo.rem_euclid(n as i64) == 0;
        if !complete {
            // Cut by the range or the boot's ends: not a window. Inside: a gap.
            if g != 0 && g != last_group {
                out.gaps += 1;
            }
            continue;
        }
        if positions
            .iter()
            .any(|p| p[lo..hi].iter().any(Option::is_none))
        {
            out.gaps += 1;
            continue;
        }
        let mut bad = false;
        for (ch, (buffer, pos)) in buffers.iter_mut().zip(&positions).enumerate() {
            buffer.clear();
            let c = &series.channels[ch];
            for p in pos[lo..hi].iter().flatten() {
                bad |= c.quality[*p] != 0;
                buffer.push(c.value[*p]);
            }
        }
        if bad {
            out.bad_quality += 1;
            continue;
        }
        let mut features = Vec::with_capacity(layouts.len());
        for l in layouts {
            let slices: Vec<&[f32]> = l.channels.iter().map(|&c| buffers[c].as_slice()).collect();
            match l.layout.extract(&slices, interval_us) {
                Ok(f) => features.push(f),
                Err(loopline_model::Error::NonFiniteFeature { .. }) => break,
                Err(e) => return Err(TrainError::Internal(format!("features: {e}"))),
            }
        }
        if features.len() != layouts.len() {
            out.bad_quality += 1;
            continue;
        }
        out.windows.push(Window {
            series: index,
            start_us: timeline[lo],
            end_us: timeline[hi - 1],
            features,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::ChannelSamples;

    /// 1 kHz samples `k` in `ks` of two channels.
    fn series(ks: impl Iterator<Item = i64> + Clone, bad_at: Option<i64>) -> BootSeries {
        let channel = |scale: f32| ChannelSamples {
            ts: ks.clone().map(|k| 1_000_000 + k * 1000).collect(),
            value: ks
                .clone()
                .map(|k| scale * ((k as f32) * 0.3).sin())
                .collect(),
            quality: ks.clone().map(|k| i16::from(Some(k) == bad_at)).collect(),
        };
        BootSeries {
            device: "d".into(),
            boot_id: "b".into(),
            channels: vec![channel(1.0), channel(2.0)],
        }
    }

    fn layouts() -> Vec<LayoutIndex> {
        let names = ["a".to_owned(), "b".to_owned()];
        vec![LayoutIndex::new(FeatureLayout::new(&["b", "a"]).unwrap(), &names).unwrap()]
    }

    #[test]
    fn windows_follow_the_anchor_grid_and_skip_partial_ends() {
        // Samples 5..=34 with windows of 10 anchored at sample 0: [5,10) and [30,35) are
        // cut by the ends; [10,20) and [20,30) are windows.
        let s = series(5..35, None);
        assert_eq!(sample_rate_hz(&s), Some(1000));
        let mut cut_ = Cut::default();
        cut(3, &s, 1000, 10, 1_000_000, &layouts(), &mut cut_).unwrap();
        assert_eq!(cut_.windows.len(), 2);
        assert_eq!((cut_.bad_quality, cut_.gaps), (0, 0));
        let w = &cut_.windows[0];
        assert_eq!(w.series, 3);
        assert_eq!(w.start_us, 1_000_000 + 10_000);
        assert_eq!(w.end_us, 1_000_000 + 19_000);
        // Layout order b, a: the first feature is b's RMS, twice a's.
        assert_eq!(w.features[0].len(), 10);
        assert!((w.features[0][0] - 2.0 * w.features[0][5]).abs() < 1e-5);
    }

    #[test]
    fn holes_and_bad_samples_are_counted() {
        // A hole at sample 15, a bad sample at 25, in 0..40 with windows of 10.
        let s = series((0..40).filter(|&k| k != 15), Some(25));
        let mut c = Cut::default();
        cut(0, &s, 1000, 10, 1_000_000, &layouts(), &mut c).unwrap();
        assert_eq!(c.windows.len(), 2);
        assert_eq!(c.gaps, 1);
        assert_eq!(c.bad_quality, 1);
        assert_eq!(c.windows[1].start_us, 1_000_000 + 30_000);
    }

    #[test]
    fn a_channel_missing_a_sample_is_a_gap() {
        let mut s = series(0..30, None);
        let ch = &mut s.channels[1];
        ch.ts.remove(12);
        ch.value.remove(12);
        ch.quality.remove(12);
        let mut c = Cut::default();
        cut(0, &s, 1000, 10, 1_000_000, &layouts(), &mut c).unwrap();
        assert_eq!((c.windows.len(), c.gaps), (2, 1));
    }
}
