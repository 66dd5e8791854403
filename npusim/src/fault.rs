//! Faults the simulated NPU can suffer, and schedules of them read from strings or TOML.
//!
//! A schedule entry is written `kind@at[:key=value]...`, several separated by commas, e.g.
//! `"ecc@10s, overheat@30s:for=2m:delta_c=40, reset@45s"`. `at` is a time since the device
//! was created (`Npu::new`'s `start_us`), in `humantime` syntax. In TOML an entry is either
//! that string or a table with the same keys:
//!
//! ```toml
//! faults = [
//!     "ecc@10s",
//!     { at = "30s", kind = "overheat", for = "2m", delta_c = 40.0 },
//!     { at = "1h", kind = "ecc-rate", per_hour = 3.0 },
//! ]
//! ```
//!
//! | kind | keys | effect |
//! | --- | --- | --- |
//! | `ecc` | `count` (1) | corrected ECC errors: counted, inference unaffected |
//! | `ecc-rate` | `per_hour` (required) | corrected ECC errors at random from then on; 0 stops them |
//! | `uncorrectable` | — | the next inference fails |
//! | `overheat` | `for` (2m), `delta_c` (30) | air around the part `delta_c` hotter for `for` |
//! | `reset` | `for` (the part's reset time) | the device resets; inferences fail meanwhile |
//!
//! Invariants: a parsed fault's numbers are finite and within the `MAX_*` bounds below, so the
//! device never sees a NaN or an overflowing time; [`Fault::bounded`] applies the same bounds
//! to faults built in code.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// Default temperature rise of an overheat fault, °C: a blocked fan or a cabinet in the sun.
pub const DEFAULT_OVERHEAT_DELTA_C: f64 = 30.0;
/// Default length of an overheat fault.
pub const DEFAULT_OVERHEAT_FOR: Duration = Duration::from_secs(120);
/// Largest accepted overheat rise, °C.
pub const MAX_OVERHEAT_DELTA_C: f64 = 100.0;
/// Largest accepted random ECC rate: about three a second.
pub const MAX_ECC_PER_HOUR: f64 = 10_000.0;
/// Longest accepted fault duration or schedule offset: 30 days.
pub const MAX_FAULT_TIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Something that happens to the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// `count` corrected ECC errors: counted and reported, the inference unaffected.
    Ecc {
        /// Number of corrected errors.
        count: u32,
    },
    /// Corrected ECC errors from now on at random (Poisson) times, `per_hour` on average; 0
    /// stops them.
    EccRate {
        /// Mean errors per hour.
        per_hour: f64,
    },
    /// The next inference hits an uncorrectable memory error and fails. Each injection fails
    /// exactly one inference.
    Uncorrectable,
    /// The air around the part is `delta_c` hotter for `duration_us`, so the junction heats
    /// and the throttle ladder engages. A new overheat replaces one in progress.
    Overheat {
        /// Rise of the ambient temperature, °C.
        delta_c: f64,
        /// How long it lasts, µs.
        duration_us: u64,
    },
    /// The device resets: inferences fail for `duration_us` (`None`: the part's own reset
    /// time), then succeed again.
    Reset {
        /// Time until the device is back, µs.
        duration_us: Option<u64>,
    },
}

impl Fault {
    /// The fault with its numbers brought within the accepted bounds (a NaN becomes 0).
    pub fn bounded(self) -> Fault {
        let max_us = duration_us(MAX_FAULT_TIME);
        let finite_or_zero = |v: f64| if v.is_finite() { v } else { 0.0 };
        match self {
            Fault::EccRate { per_hour } => Fault::EccRate {
                per_hour: finite_or_zero(per_hour).clamp(0.0, MAX_ECC_PER_HOUR),
            },
            Fault::Overheat {
                delta_c,
                duration_us,
            } => Fault::Overheat {
                delta_c: finite_or_zero(delta_c).clamp(0.0, MAX_OVERHEAT_DELTA_C),
                duration_us: duration_us.min(max_us),
            },
            Fault::Reset { duration_us } => Fault::Reset {
                duration_us: duration_us.map(|d| d.min(max_us)),
            },
            f @ (Fault::Ecc { .. } | Fault::Uncorrectable) => f,
        }
    }

    /// The schedule keyword of this fault.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Ecc { .. } => "ecc",
            Fault::EccRate { .. } => "ecc-rate",
            Fault::Uncorrectable => "uncorrectable",
            Fault::Overheat { .. } => "overheat",
            Fault::Reset { .. } => "reset",
        }
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A fault and when it happens, relative to the device's creation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledFault {
    /// Time after `Npu::new`'s `start_us`.
    pub at: Duration,
    /// What happens.
    pub fault: Fault,
}

/// Faults to inject at given times, kept in time order (entries at the same time keep the
/// order they were written in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSchedule {
    faults: Vec<ScheduledFault>,
}

impl FaultSchedule {
    /// A schedule of `faults`, sorted by time.
    pub fn new(mut faults: Vec<ScheduledFault>) -> Self {
        faults.sort_by_key(|f| f.at);
        Self { faults }
    }

    /// The faults in time order.
    pub fn faults(&self) -> &[ScheduledFault] {
        &self.faults
    }

    /// Number of faults.
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    /// Whether the schedule holds no fault.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// The optional keys of one schedule entry, as written.
#[derive(Debug, Default)]
struct Params {
    for_: Option<Duration>,
    delta_c: Option<f64>,
    count: Option<u32>,
    per_hour: Option<f64>,
}

fn bad(input: &str, reason: impl Into<String>) -> Error {
    Error::BadFault {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn parse_time(input: &str, key: &str, value: &str) -> Result<Duration> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| bad(input, format!("{key} {value:?} is not a duration: {e}")))?;
    if d > MAX_FAULT_TIME {
        return Err(bad(
            input,
            format!("{key} {value:?} is longer than 30 days"),
        ));
    }
    Ok(d)
}

/// Builds a fault from its kind and keys, rejecting keys the kind does not take.
fn build(input: &str, kind: &str, at: Duration, p: Params) -> Result<ScheduledFault> {
    let allowed: &[&str] = match kind {
        "ecc" => &["count"],
        "ecc-rate" | "ecc_rate" => &["per_hour"],
        "uncorrectable" | "ue" => &[],
        "overheat" => &["for", "delta_c"],
        "reset" => &["for"],
        other => {
            return Err(bad(
                input,
                format!(
                    "unknown fault kind {other:?}; known: ecc, ecc-rate, uncorrectable, overheat, reset"
                ),
            ));
        }
    };
    let given = [
        ("for", p.for_.is_some()),
        ("delta_c", p.delta_c.is_some()),
        ("count", p.count.is_some()),
        ("per_hour", p.per_hour.is_some()),
    ];
    if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(bad(input, format!("{kind} takes no {key}")));
    }
    let fault = match kind {
        "ecc" => {
            let count = p.count.unwrap_or(1);
            if count == 0 {
                return Err(bad(input, "count must be at least 1"));
            }
            Fault::Ecc { count }
        }
        "ecc-rate" | "ecc_rate" => {
            let per_hour = p
                .per_hour
                .ok_or_else(|| bad(input, "ecc-rate needs per_hour"))?;
            if !(0.0..=MAX_ECC_PER_HOUR).contains(&per_hour) {
                return Err(bad(
                    input,
                    format!("per_hour {per_hour} is outside 0..={MAX_ECC_PER_HOUR}"),
                ));
            }
            Fault::EccRate { per_hour }
        }
        "overheat" => {
            let delta_c = p.delta_c.unwrap_or(DEFAULT_OVERHEAT_DELTA_C);
            if !(0.0..=MAX_OVERHEAT_DELTA_C).contains(&delta_c) {
                return Err(bad(
                    input,
                    format!("delta_c {delta_c} is outside 0..={MAX_OVERHEAT_DELTA_C}"),
                ));
            }
            Fault::Overheat {
                delta_c,
                duration_us: duration_us(p.for_.unwrap_or(DEFAULT_OVERHEAT_FOR)),
            }
        }
        "reset" => Fault::Reset {
            duration_us: p.for_.map(duration_us),
        },
        _ => Fault::Uncorrectable,
    };
    Ok(ScheduledFault { at, fault })
}

impl FromStr for ScheduledFault {
    type Err = Error;

    /// Parses `kind@at[:key=value]...`, e.g. `overheat@30s:for=2m:delta_c=40`.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, rest) = s
            .split_once('@')
            .ok_or_else(|| bad(s, "expected kind@time, e.g. overheat@30s"))?;
        let mut parts = rest.split(':');
        let at = parse_time(s, "time", parts.next().unwrap_or_default())?;
        let mut p = Params::default();
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(s, format!("expected key=value, found {part:?}")))?;
            let (key, value) = (key.trim(), value.trim());
            let number = |what: &str| -> Result<f64> {
                value
                    .parse::<f64>()
                    .map_err(|_| bad(s, format!("{key} {value:?} is not {what}")))
            };
            match key {
                "for" | "duration" => p.for_ = Some(parse_time(s, key, value)?),
                "delta_c" => p.delta_c = Some(number("a number")?),
                "per_hour" => p.per_hour = Some(number("a number")?),
                "count" => {
                    p.count =
                        Some(value.parse().map_err(|_| {
                            bad(s, format!("count {value:?} is not a whole number"))
                        })?);
                }
                other => {
                    return Err(bad(
                        s,
                        format!("unknown key {other:?}; known: for, delta_c, count, per_hour"),
                    ));
                }
            }
        }
        build(s, &kind.trim().to_ascii_lowercase(), at, p)
    }
}

impl fmt::Display for ScheduledFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |us: u64| humantime::format_duration(Duration::from_micros(us));
        write!(
            f,
            "{}@{}",
            self.fault.kind(),
            humantime::format_duration(self.at)
        )?;
        match self.fault {
            Fault::Ecc { count: 1 } | Fault::Uncorrectable | Fault::Reset { duration_us: None } => {
                Ok(())
            }
            Fault::Ecc { count } => write!(f, ":count={count}"),
            Fault::EccRate { per_hour } => write!(f, ":per_hour={per_hour}"),
            Fault::Overheat {
                delta_c,
                duration_us,
            } => write!(f, ":for={}:delta_c={delta_c}", time(duration_us)),
            Fault::Reset {
                duration_us: Some(d),
            } => write!(f, ":for={}", time(d)),
        }
    }
}

impl FromStr for FaultSchedule {
    type Err = Error;

    /// Parses entries separated by commas or semicolons; an empty string is an empty schedule.
    fn from_str(s: &str) -> Result<Self> {
        let faults = s
            .split([',', ';'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>>>()?;
        Ok(FaultSchedule::new(faults))
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, fault) in self.faults.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{fault}")?;
        }
        Ok(())
    }
}

/// The table form of one schedule entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultTable {
    /// Time after the device's creation.
    at: String,
    /// Fault keyword.
    kind: String,
    /// Length of an overheat or reset.
    #[serde(rename = "for", alias = "duration")]
    for_: Option<String>,
    /// Ambient rise of an overheat, °C.
    delta_c: Option<f64>,
    /// Number of corrected ECC errors.
    count: Option<u32>,
    /// Mean random ECC errors per hour.
    per_hour: Option<f64>,
}

impl FaultTable {
    fn into_fault(self) -> Result<ScheduledFault> {
        let input = format!("{{ at = {:?}, kind = {:?}, ... }}", self.at, self.kind);
        let at = parse_time(&input, "at", &self.at)?;
        let for_ = match &self.for_ {
            Some(v) => Some(parse_time(&input, "for", v)?),
            None => None,
        };
        let p = Params {
            for_,
            delta_c: self.delta_c,
            count: self.count,
            per_hour: self.per_hour,
        };
        build(&input, &self.kind.trim().to_ascii_lowercase(), at, p)
    }
}

impl Serialize for ScheduledFault {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScheduledFault {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ScheduledFault;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fault such as \"overheat@30s\" or a table { at, kind, ... }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let table = FaultTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                table.into_fault().map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for FaultSchedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.faults)
    }
}

impl<'de> Deserialize<'de> for FaultSchedule {
    /// Accepts a list of entries or one string of comma-separated entries.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FaultSchedule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of faults or a string such as \"ecc@10s, reset@45s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut faults = Vec::new();
                while let Some(f) = seq.next_element::<ScheduledFault>()? {
                    faults.push(f);
                }
                Ok(FaultSchedule::new(faults))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_short_forms() {
        let s: FaultSchedule = "reset@45s, ecc@10s; overheat@30s, uncorrectable@1m"
            .parse()
            .unwrap();
        let kinds: Vec<_> = s
            .faults()
            .iter()
            .map(|f| (f.at.as_secs(), f.fault))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (10, Fault::Ecc { count: 1 }),
                (
                    30,
                    Fault::Overheat {
                        delta_c: DEFAULT_OVERHEAT_DELTA_C,
                        duration_us: 120_000_000
                    }
                ),
                (45, Fault::Reset { duration_us: None }),
                (60, Fault::Uncorrectable),
            ]
        );
    }

    #[test]
    fn parses_keys() {
        let f: ScheduledFault = "overheat@1m 30s:for=10s:delta_c=45.5".parse().unwrap();
        assert_eq!(f.at, Duration::from_secs(90));
        assert_eq!(
            f.fault,
            Fault::Overheat {
                delta_c: 45.5,
                duration_us: 10_000_000
            }
        );
        let f: ScheduledFault = "ecc-rate@0s:per_hour=12".parse().unwrap();
        assert_eq!(f.fault, Fault::EccRate { per_hour: 12.0 });
        let f: ScheduledFault = "reset@2s:for=500ms".parse().unwrap();
        assert_eq!(
            f.fault,
            Fault::Reset {
                duration_us: Some(500_000)
            }
        );
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        let cases = [
            ("melt@3s", "unknown fault kind \"melt\""),
            ("overheat", "expected kind@time"),
            ("ecc@soon", "time \"soon\" is not a duration"),
            ("ecc@1s:delta_c=3", "ecc takes no delta_c"),
            ("overheat@1s:delta_c=500", "delta_c 500 is outside"),
            ("ecc-rate@1s", "ecc-rate needs per_hour"),
            ("ecc@1s:colour=red", "unknown key \"colour\""),
            ("ecc@1s:count=0", "count must be at least 1"),
            ("reset@1s:for=90d", "longer than 30 days"),
        ];
        for (input, want) in cases {
            let err = input.parse::<ScheduledFault>().unwrap_err().to_string();
            assert!(err.contains(input), "{err}");
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        let s: FaultSchedule =
            "ecc@10s:count=3, ecc-rate@0s:per_hour=2.5, overheat@30s:for=1m 30s:delta_c=40, reset@45s, reset@50s:for=2s, ue@1m"
                .parse()
                .unwrap();
        let again: FaultSchedule = s.to_string().parse().unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn bounded_clamps_values_built_in_code() {
        assert_eq!(
            Fault::Overheat {
                delta_c: f64::NAN,
                duration_us: u64::MAX
            }
            .bounded(),
            Fault::Overheat {
                delta_c: 0.0,
                duration_us: duration_us(MAX_FAULT_TIME)
            }
        );
        assert_eq!(
            Fault::EccRate { per_hour: 1e300 }.bounded(),
            Fault::EccRate {
                per_hour: MAX_ECC_PER_HOUR
            }
        );
    }
}
