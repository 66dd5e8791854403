//! Ground-truth labels: what the simulator was doing at each sample.
//!
//! SIMULATION ONLY. A real line has no labels; they exist so that the anomaly model's precision
//! and recall, and the loop's recovery after drift, can be measured. Nothing but evaluation may
//! read them: the agent attaches them to telemetry as `sim_labels` and must never feed them to
//! its model, its features or its thresholds.
//!
//! A recipe change is labelled [`FaultKind::RecipeChange`] while the speed settles, but it is a
//! process change, not a fault ([`FaultKind::is_fault`] is false): a model that flags it is
//! reporting a false positive unless the evaluation chooses otherwise. When several things are
//! active at once, the label is the dominant one: any fault over a recipe change over normal,
//! and among faults the highest current severity (the earlier-scheduled on a tie).

/// What the simulator is doing to the machine or a sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Normal,
    Imbalance,
    BearingOuterRace,
    BearingInnerRace,
    SensorStuck,
    SensorDrift,
    SensorSpike,
    SensorDropout,
    SensorNoise,
    /// A process change, labelled while the speed settles; not a fault.
    RecipeChange,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Normal,
        FaultKind::Imbalance,
        FaultKind::BearingOuterRace,
        FaultKind::BearingInnerRace,
        FaultKind::SensorStuck,
        FaultKind::SensorDrift,
        FaultKind::SensorSpike,
        FaultKind::SensorDropout,
        FaultKind::SensorNoise,
        FaultKind::RecipeChange,
    ];

    /// The name on the wire (`SimLabel.fault`) and in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Normal => "normal",
            FaultKind::Imbalance => "imbalance",
            FaultKind::BearingOuterRace => "bearing_outer_race",
            FaultKind::BearingInnerRace => "bearing_inner_race",
            FaultKind::SensorStuck => "sensor_stuck",
            FaultKind::SensorDrift => "sensor_drift",
            FaultKind::SensorSpike => "sensor_spike",
            FaultKind::SensorDropout => "sensor_dropout",
            FaultKind::SensorNoise => "sensor_noise",
            FaultKind::RecipeChange => "recipe_change",
        }
    }

    /// The kind called `name` on the wire.
    pub fn from_name(name: &str) -> Option<FaultKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether a model should flag it: false for normal operation and for a recipe change.
    pub fn is_fault(self) -> bool {
        !matches!(self, FaultKind::Normal | FaultKind::RecipeChange)
    }

    /// Whether it is a fault of one sensor rather than of the machine.
    pub fn is_sensor_fault(self) -> bool {
        matches!(
            self,
            FaultKind::SensorStuck
                | FaultKind::SensorDrift
                | FaultKind::SensorSpike
                | FaultKind::SensorDropout
                | FaultKind::SensorNoise
        )
    }

    /// Precedence when several are active: faults, then a recipe change, then normal.
    pub(crate) fn rank(self) -> u8 {
        match self {
            FaultKind::Normal => 0,
            FaultKind::RecipeChange => 1,
            _ => 2,
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ground truth of one sample (simulation only; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    pub fault: FaultKind,
    /// 0..=1, how far the fault has developed (0 for normal; for a recipe change, the relative
    /// size of the setpoint step, capped at 1).
    pub severity: f32,
    /// The sensor a sensor fault affects (a [`crate::CHANNELS`] name); `None` otherwise.
    pub sensor: Option<&'static str>,
}

impl Label {
    pub const NORMAL: Label = Label {
        fault: FaultKind::Normal,
        severity: 0.0,
        sensor: None,
    };
}

impl Default for Label {
    fn default() -> Self {
        Label::NORMAL
    }
}

/// A run of samples with the same fault on the same sensor, as `SimLabel` carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpan {
    /// Timestamp of the first sample, µs.
    pub start_us: i64,
    /// Exclusive end: the timestamp of the sample after the last one, µs.
    pub end_us: i64,
    /// [`FaultKind::as_str`] of the span's fault.
    pub fault: &'static str,
    /// The largest severity over the span: a span that ends worse than it began reports how bad
    /// it got.
    pub severity: f32,
    pub sensor: Option<&'static str>,
}

/// Run-length codes per-sample labels into spans. Push every sample of a batch in order, then
/// [`LabelSpans::take`] with the batch's end (the timestamp of the sample after its last);
/// spans never cross a `take`, so each batch's spans cover exactly its own samples.
#[derive(Debug, Clone, Default)]
pub struct LabelSpans {
    done: Vec<LabelSpan>,
    open: Option<LabelSpan>,
}

impl LabelSpans {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the label of the sample stamped `ts_us` (timestamps must increase).
    pub fn push(&mut self, ts_us: i64, label: &Label) {
        let fault = label.fault.as_str();
        if let Some(open) = &mut self.open {
            if open.fault == fault && open.sensor == label.sensor {
                open.severity = open.severity.max(label.severity);
                return;
            }
            let mut closed = open.clone();
            closed.end_us = ts_us;
            self.done.push(closed);
        }
        self.open = Some(LabelSpan {
            start_us: ts_us,
            end_us: ts_us,
            fault,
            severity: label.severity,
            sensor: label.sensor,
        });
    }

    /// Whether nothing was pushed since the last take.
    pub fn is_empty(&self) -> bool {
        self.open.is_none()
    }

    /// Closes the open span at `end_us` (exclusive) and returns every span since the last take.
    pub fn take(&mut self, end_us: i64) -> Vec<LabelSpan> {
        if let Some(mut open) = self.open.take() {
            open.end_us = end_us;
            self.done.push(open);
        }
        std::mem::take(&mut self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(FaultKind::from_name("bearing"), None);
        assert!(!FaultKind::RecipeChange.is_fault());
        assert!(FaultKind::SensorStuck.is_fault() && FaultKind::SensorStuck.is_sensor_fault());
        assert!(!FaultKind::BearingOuterRace.is_sensor_fault());
    }

    #[test]
    fn spans_run_length_code_and_take_the_maximum_severity() {
        let wear = |s| Label {
            fault: FaultKind::BearingOuterRace,
            severity: s,
            sensor: None,
        };
        let stuck = Label {
            fault: FaultKind::SensorStuck,
            severity: 1.0,
            sensor: Some("temperature"),
        };
        let stuck_other = Label {
            sensor: Some("pressure"),
            ..stuck
        };
        let mut spans = LabelSpans::new();
        assert!(spans.is_empty());
        spans.push(0, &Label::NORMAL);
        spans.push(10, &Label::NORMAL);
        spans.push(20, &wear(0.1));
        spans.push(30, &wear(0.3));
        spans.push(40, &wear(0.2));
        spans.push(50, &stuck);
        spans.push(60, &stuck_other);
        let got = spans.take(70);
        let summary: Vec<_> = got
            .iter()
            .map(|s| (s.start_us, s.end_us, s.fault, s.severity, s.sensor))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 20, "normal", 0.0, None),
                (20, 50, "bearing_outer_race", 0.3, None),
                (50, 60, "sensor_stuck", 1.0, Some("temperature")),
                (60, 70, "sensor_stuck", 1.0, Some("pressure")),
            ]
        );
        assert!(spans.is_empty());
        assert!(spans.take(80).is_empty());
        // A new batch starts a new span even if the label did not change.
        spans.push(70, &stuck_other);
        assert_eq!(spans.take(80)[0].start_us, 70);
    }
}
