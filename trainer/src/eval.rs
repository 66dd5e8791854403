//! Judging a model's flags on held-out windows against the simulator's ground truth.
//!
//! SIMULATION ONLY: `sim_labels` exist so that precision and recall can be measured; nothing
//! here feeds training or the threshold. A window is faulty when a label span other than
//! `normal` or `recipe_change` of the same device boot overlaps it (`start <= window end` and
//! `end > window start`, the rule of `docs/lake.md`), and labelled when any span does.

use serde::{Deserialize, Serialize};

use crate::lake::LabelSpan;

/// Labels that are not faults: normal running, and a process change while it settles.
pub const NOT_FAULTS: [&str; 2] = ["normal", "recipe_change"];

/// A model's flags on the held-out windows, against the labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// The model's version (the champion's; the candidate's is the run's `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Held-out windows scored.
    pub windows: u64,
    /// Of them, windows some label span overlaps; only these count in `tp`…`tn`.
    pub labelled_windows: u64,
    /// Of the labelled windows, the faulty ones.
    pub faulty_windows: u64,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
    /// `tp / (tp + fp)`; null when nothing labelled was flagged.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`; null when no labelled window was faulty.
    pub recall: Option<f64>,
    /// Harmonic mean of the two; null when either is null or both are 0.
    pub f1: Option<f64>,
    /// Share of all held-out windows flagged.
    pub anomaly_rate: f64,
}

/// What the labels say about one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Unlabelled,
    Normal,
    Faulty,
}

/// Label spans of one device boot, sorted by start, for window look-ups.
#[derive(Debug, Default)]
pub struct BootLabels {
    spans: Vec<(i64, i64, bool)>,
}

impl BootLabels {
    pub fn new<'a>(spans: impl IntoIterator<Item = &'a LabelSpan>) -> Self {
        let mut spans: Vec<(i64, i64, bool)> = spans
            .into_iter()
            .map(|s| {
                (
                    s.start_us,
                    s.end_us,
                    !NOT_FAULTS.contains(&s.fault.as_str()),
                )
            })
            .collect();
        spans.sort_unstable();
        BootLabels { spans }
    }

    /// The truth of the window of samples stamped `start_us..=end_us`.
    pub fn truth(&self, start_us: i64, end_us: i64) -> Truth {
        // Spans starting after the window's end cannot overlap it.
        let upto = self.spans.partition_point(|s| s.0 <= end_us);
        let mut truth = Truth::Unlabelled;
        for &(_, end, faulty) in &self.spans[..upto] {
            if end > start_us {
                if faulty {
                    return Truth::Faulty;
                }
                truth = Truth::Normal;
            }
        }
        truth
    }
}

/// Counts `(flagged, truth)` pairs into an [`Eval`].
pub fn evaluate(results: impl IntoIterator<Item = (bool, Truth)>) -> Eval {
    let mut e = Eval::default();
    let mut flagged = 0u64;
    for (anomaly, truth) in results {
        e.windows += 1;
        flagged += u64::from(anomaly);
        match (anomaly, truth) {
            (_, Truth::Unlabelled) => continue,
            (true, Truth::Faulty) => e.tp += 1,
            (true, Truth::Normal) => e.fp += 1,
            (false, Truth::Faulty) => e.fn_ += 1,
            (false, Truth::Normal) => e.tn += 1,
        }
        e.labelled_windows += 1;
        e.faulty_windows += u64::from(truth == Truth::Faulty);
    }
    let share = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    e.precision = share(e.tp, e.tp + e.fp);
    e.recall = share(e.tp, e.tp + e.fn_);
    e.f1 = match (e.precision, e.recall) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        _ => None,
    };
    e.anomaly_rate = if e.windows == 0 {
        0.0
    } else {
        flagged as f64 / e.windows as f64
    };
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64, end: i64, fault: &str) -> LabelSpan {
        LabelSpan {
            device: "d".into(),
            boot_id: "b".into(),
            start_us: start,
            end_us: end,
            fault: fault.into(),
        }
    }

    #[test]
    fn overlap_decides_the_truth() {
        let spans = [
            span(0, 100, "normal"),
            span(100, 200, "imbalance"),
            span(200, 300, "recipe_change"),
        ];
        let labels = BootLabels::new(&spans);
        assert_eq!(labels.truth(10, 99), Truth::Normal);
        // A window ending at the fault's first sample overlaps it.
        assert_eq!(labels.truth(50, 100), Truth::Faulty);
        // A window starting at the fault's (exclusive) end does not.
        assert_eq!(labels.truth(200, 250), Truth::Normal);
        assert_eq!(labels.truth(400, 500), Truth::Unlabelled);
    }

    #[test]
    fn counts_and_undefined_ratios() {
        use Truth::*;
        let e = evaluate([
            (true, Faulty),
            (true, Normal),
            (false, Faulty),
            (false, Normal),
            (false, Normal),
            (true, Unlabelled),
        ]);
        assert_eq!((e.tp, e.fp, e.fn_, e.tn), (1, 1, 1, 2));
        assert_eq!((e.windows, e.labelled_windows, e.faulty_windows), (6, 5, 2));
        assert_eq!(e.precision, Some(0.5));
        assert_eq!(e.recall, Some(0.5));
        assert_eq!(e.f1, Some(0.5));
        assert_eq!(e.anomaly_rate, 0.5);
        let none = evaluate([(false, Normal), (false, Unlabelled)]);
        assert_eq!((none.precision, none.recall, none.f1), (None, None, None));
        let json = serde_json::to_value(&none).unwrap();
        assert!(json["precision"].is_null() && json.get("fn").is_some());
    }
}
