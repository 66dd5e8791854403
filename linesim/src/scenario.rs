//! Scenarios: the machine, its recipes and a schedule of faults and process changes.
//!
//! A scenario is a TOML file (unknown keys are errors, durations are humantime strings such as
//! `"90s"` or `"5m"`), parsed once into typed values and validated with errors that name the
//! key and the file, so that nothing downstream re-checks them. Every `at` is measured from the
//! simulation's sample 0.
//!
//! ```toml
//! name = "example"
//! description = "One recipe change, then a stuck temperature sensor."
//! initial_recipe = 101          # optional: the first [[recipe]] otherwise
//!
//! [machine]                     # optional, and so is every key in it
//! rated_speed_rpm = 1480.0
//! thermal_tau = "10m"
//!
//! [machine.bearing]             # a 6205 unless given
//! balls = 9
//!
//! [[recipe]]
//! id = 101
//! speed_rpm = 1480.0
//! load = 0.75
//!
//! [[recipe]]
//! id = 102
//! speed_rpm = 1200.0
//! load = 0.9
//!
//! [[event]]
//! at = "20s"
//! kind = "recipe_change"
//! recipe = 102
//!
//! [[event]]
//! at = "35s"
//! kind = "sensor_stuck"
//! sensor = "temperature"
//! duration = "15s"
//! ```
//!
//! The named scenarios ship as `linesim/scenarios/*.toml`, compiled in with `include_str!`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::{CHANNELS, Error, Result, channel, channel_index};

/// The built-in scenarios: (name, TOML text).
const BUILT_IN: [(&str, &str); 7] = [
    ("normal", include_str!("../scenarios/normal.toml")),
    ("default", include_str!("../scenarios/default.toml")),
    (
        "bearing-wear",
        include_str!("../scenarios/bearing-wear.toml"),
    ),
    (
        "sensor-faults",
        include_str!("../scenarios/sensor-faults.toml"),
    ),
    (
        "recipe-change",
        include_str!("../scenarios/recipe-change.toml"),
    ),
    ("demo-recipe", include_str!("../scenarios/demo-recipe.toml")),
    (
        "demo-bearing",
        include_str!("../scenarios/demo-bearing.toml"),
    ),
];

/// Largest recipe id: the recipe channel is an f32, exact for integers up to 2^24.
pub const MAX_RECIPE_ID: u32 = 1 << 24;

/// The machine as the scenario describes it, before each device's own variation.
///
/// Defaults (see [`Machine::default`]) describe a 5.5 kW, 4-pole, 400 V motor driving a
/// centrifugal pump through a variable-speed drive, on an SKF 6205 bearing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Machine {
    /// Shaft speed at which the `rated_*` figures hold, rpm.
    pub rated_speed_rpm: f64,
    /// Time constant with which shaft speed follows its setpoint (the drive's ramp).
    #[serde(deserialize_with = "duration::de")]
    pub speed_tau: Duration,
    /// Supply frequency of the motor current, Hz (50 or 60).
    pub mains_hz: f64,
    /// RMS phase current with no load (the magnetising current), A.
    pub no_load_current_a: f64,
    /// RMS phase current at full load, A. Current is affine in load between the two.
    pub full_load_current_a: f64,
    /// Discharge pressure at rated speed, bar; scales with speed squared.
    pub rated_pressure_bar: f64,
    /// Flow at rated speed, L/min; scales with speed.
    pub rated_flow_l_min: f64,
    /// Ambient temperature, Celsius.
    pub ambient_c: f64,
    /// Thermal time constant of the bearing housing, where the temperature sensor sits.
    #[serde(deserialize_with = "duration::de")]
    pub thermal_tau: Duration,
    /// Steady-state temperature rise at full load (motor and pump losses), Kelvin.
    pub temp_rise_load_c: f64,
    /// Steady-state rise from friction and windage at rated speed, Kelvin; scales with speed².
    pub temp_rise_speed_c: f64,
    /// Extra steady-state rise from a fully worn bearing at rated speed, Kelvin.
    pub temp_rise_wear_c: f64,
    /// Start at ambient temperature instead of at the initial operating point's steady state.
    pub cold_start: bool,
    /// Peak 1x vibration velocity of the residual imbalance at rated speed, mm/s.
    pub imbalance_mm_s: f64,
    /// Peak 2x vibration velocity (residual misalignment) at rated speed, mm/s.
    pub misalignment_mm_s: f64,
    /// Extra peak 1x velocity of an imbalance fault at severity 1 and rated speed, mm/s.
    pub imbalance_fault_mm_s: f64,
    /// Impact strength of a fully developed bearing defect at rated speed, mm/s (the peak of a
    /// single ringing burst).
    pub bearing_impact_mm_s: f64,
    /// Structural resonance that bearing impacts ring, Hz (clamped to 0.4 of the sample rate).
    pub resonance_hz: f64,
    /// Damping ratio of that resonance; higher means shorter bursts.
    pub resonance_damping: f64,
    /// Broadband vibration noise floor, mm/s RMS.
    pub vibration_noise_mm_s: f64,
    /// Each device draws its parameters within ± this fraction of the values above, so the
    /// machines of a line differ the way real ones do. 0 gives every device these values.
    pub variation: f64,
    /// Geometry of the bearing whose defects the scenario can schedule.
    pub bearing: Bearing,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            rated_speed_rpm: 1480.0,
            speed_tau: Duration::from_secs(2),
            mains_hz: 50.0,
            no_load_current_a: 4.5,
            full_load_current_a: 10.8,
            rated_pressure_bar: 6.0,
            rated_flow_l_min: 250.0,
            ambient_c: 22.0,
            thermal_tau: Duration::from_secs(600),
            temp_rise_load_c: 28.0,
            temp_rise_speed_c: 8.0,
            temp_rise_wear_c: 15.0,
            cold_start: false,
            imbalance_mm_s: 1.8,
            misalignment_mm_s: 0.4,
            imbalance_fault_mm_s: 5.0,
            bearing_impact_mm_s: 4.0,
            resonance_hz: 320.0,
            resonance_damping: 0.15,
            vibration_noise_mm_s: 0.15,
            variation: 0.05,
            bearing: Bearing::default(),
        }
    }
}

/// Rolling-element bearing geometry, from which the defect frequencies follow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bearing {
    /// Number of rolling elements.
    pub balls: u32,
    /// Rolling-element diameter, mm.
    pub ball_diameter_mm: f64,
    /// Pitch diameter (centre circle of the rolling elements), mm.
    pub pitch_diameter_mm: f64,
    /// Contact angle, degrees (0 for a deep-groove ball bearing under radial load).
    pub contact_angle_deg: f64,
}

impl Default for Bearing {
    /// An SKF 6205 deep-groove ball bearing: 9 balls of 7.94 mm on a 39.04 mm pitch circle,
    /// giving BPFO 3.585 and BPFI 5.415 times shaft speed.
    fn default() -> Self {
        Bearing {
            balls: 9,
            ball_diameter_mm: 7.94,
            pitch_diameter_mm: 39.04,
            contact_angle_deg: 0.0,
        }
    }
}

/// An operating point: what the MES tells the line to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Product / recipe number, reported on the `recipe` channel.
    pub id: u32,
    /// Speed setpoint, rpm, reported on the `speed_setpoint` channel.
    pub speed_rpm: f64,
    /// Torque at rated speed as a fraction of full load (product viscosity, say); the shaft
    /// torque is this times (speed / rated speed)², as a centrifugal pump's is.
    pub load: f64,
}

/// What a scheduled event does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventKind {
    /// The MES switches to recipe `recipe`: the setpoint and load move. A process change, not a
    /// fault; it is labelled while the speed settles.
    RecipeChange { recipe: u32 },
    /// Extra 1x imbalance (a lost balance weight, build-up on the impeller).
    Imbalance,
    /// An outer-race spall: impacts at BPFO.
    BearingOuterRace,
    /// An inner-race spall: impacts at BPFI, modulated at shaft speed.
    BearingInnerRace,
    /// The sensor holds the value it had when the fault began.
    SensorStuck,
    /// The sensor's offset grows linearly.
    SensorDrift,
    /// Isolated outliers.
    SensorSpike,
    /// The sensor stops answering: quality BAD, value held at the last one read.
    SensorDropout,
    /// The sensor's noise floor rises.
    SensorNoise,
}

impl EventKind {
    /// The name used in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RecipeChange { .. } => "recipe_change",
            EventKind::Imbalance => "imbalance",
            EventKind::BearingOuterRace => "bearing_outer_race",
            EventKind::BearingInnerRace => "bearing_inner_race",
            EventKind::SensorStuck => "sensor_stuck",
            EventKind::SensorDrift => "sensor_drift",
            EventKind::SensorSpike => "sensor_spike",
            EventKind::SensorDropout => "sensor_dropout",
            EventKind::SensorNoise => "sensor_noise",
        }
    }

    /// Whether the event needs (and allows) a `sensor`.
    pub fn is_sensor_fault(&self) -> bool {
        matches!(
            self,
            EventKind::SensorStuck
                | EventKind::SensorDrift
                | EventKind::SensorSpike
                | EventKind::SensorDropout
                | EventKind::SensorNoise
        )
    }

    /// Whether a `ramp` means something for this kind.
    fn takes_ramp(&self) -> bool {
        matches!(
            self,
            EventKind::Imbalance
                | EventKind::BearingOuterRace
                | EventKind::BearingInnerRace
                | EventKind::SensorDrift
                | EventKind::SensorNoise
        )
    }
}

/// One scheduled event, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it begins, from sample 0.
    pub at: Duration,
    pub kind: EventKind,
    /// Index into [`CHANNELS`] of the affected sensor; `Some` exactly for sensor faults.
    pub sensor: Option<usize>,
    /// 0..=1. For machine faults and sensor noise, the final severity after `ramp`; for a
    /// spike fault, the outlier rate and size; for drift, the offset growth per `ramp` in units
    /// of the sensor's span; stuck and dropout carry it only into the label.
    pub severity: f64,
    /// Machine faults and noise grow as `severity * (t / ramp)²` over `ramp` (zero: a step);
    /// drift grows by `severity` spans per `ramp`, without limit.
    pub ramp: Duration,
    /// How long it lasts; `None` is to the end of the run. For a recipe change it is how long
    /// the change is labelled (five speed time constants if not given: settled to within 1 %).
    pub duration: Option<Duration>,
}

/// Default ramp of a drift: the offset grows by `severity` spans per minute.
pub const DEFAULT_DRIFT_RAMP: Duration = Duration::from_secs(60);

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    name: String,
    description: String,
    origin: String,
    machine: Machine,
    recipes: Vec<Recipe>,
    initial_recipe: usize,
    events: Vec<Event>,
}

impl Scenario {
    /// Names accepted by [`Scenario::named`].
    pub const NAMES: [&'static str; 7] = [
        BUILT_IN[0].0,
        BUILT_IN[1].0,
        BUILT_IN[2].0,
        BUILT_IN[3].0,
        BUILT_IN[4].0,
        BUILT_IN[5].0,
        BUILT_IN[6].0,
    ];

    /// A built-in scenario: `normal`, `default`, `bearing-wear`, `sensor-faults`,
    /// `recipe-change`, or the retraining demo's `demo-recipe` and `demo-bearing`.
    pub fn named(name: &str) -> Result<Scenario> {
        let Some((found, text)) = BUILT_IN.iter().find(|(n, _)| *n == name) else {
            return Err(Error::UnknownScenario {
                name: name.to_owned(),
                known: Self::NAMES.join(", "),
            });
        };
        Self::parse(
            text,
            format!("built-in `{found}` (linesim/scenarios/{found}.toml)"),
        )
    }

    /// Parses a scenario from TOML text; errors call it `<string>`.
    pub fn from_toml_str(text: &str) -> Result<Scenario> {
        Self::parse(text, "<string>".to_owned())
    }

    /// Reads and parses a scenario file; errors name the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path.display().to_string())
    }

    fn parse(text: &str, origin: String) -> Result<Scenario> {
        let file: ScenarioFile = match toml::from_str(text) {
            Ok(file) => file,
            Err(source) => {
                return Err(Error::Parse {
                    origin,
                    source: Box::new(source),
                });
            }
        };
        file.validate(origin)
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the scenario shows, in a sentence or two.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Where it came from: a path, a built-in name, or `<string>`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn recipes(&self) -> &[Recipe] {
        &self.recipes
    }

    /// The recipe the line runs at sample 0.
    pub fn initial_recipe(&self) -> &Recipe {
        &self.recipes[self.initial_recipe]
    }

    /// The schedule, sorted by `at` (events at the same time keep their file order).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The recipe with id `id`.
    pub fn recipe(&self, id: u32) -> Option<&Recipe> {
        self.recipes.iter().find(|r| r.id == id)
    }
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    initial_recipe: Option<u32>,
    #[serde(default)]
    machine: Machine,
    #[serde(default, rename = "recipe")]
    recipes: Vec<Recipe>,
    #[serde(default, rename = "event")]
    events: Vec<EventFile>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    RecipeChange,
    Imbalance,
    BearingOuterRace,
    BearingInnerRace,
    SensorStuck,
    SensorDrift,
    SensorSpike,
    SensorDropout,
    SensorNoise,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    #[serde(deserialize_with = "duration::de")]
    at: Duration,
    kind: KindName,
    #[serde(default)]
    sensor: Option<String>,
    #[serde(default)]
    severity: Option<f64>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    ramp: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    duration: Option<Duration>,
    #[serde(default)]
    recipe: Option<u32>,
}

/// The recipe a scenario without `[[recipe]]` runs: rated speed, 75 % load.
fn fallback_recipe(machine: &Machine) -> Recipe {
    Recipe {
        id: 1,
        speed_rpm: machine.rated_speed_rpm,
        load: 0.75,
    }
}

impl ScenarioFile {
    fn validate(self, origin: String) -> Result<Scenario> {
        let invalid = |key: String, reason: String| Error::Invalid {
            origin: origin.clone(),
            key,
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name".into(), "must not be empty".into()));
        }
        check_machine(&self.machine).map_err(|(key, reason)| invalid(key, reason))?;

        let recipes = if self.recipes.is_empty() {
            vec![fallback_recipe(&self.machine)]
        } else {
            self.recipes
        };
        for (i, r) in recipes.iter().enumerate() {
            if r.id > MAX_RECIPE_ID {
                return Err(invalid(
                    format!("recipe[{i}].id"),
                    format!(
                        "is {}; the recipe channel is exact up to {MAX_RECIPE_ID}",
                        r.id
                    ),
                ));
            }
            if recipes[..i].iter().any(|o| o.id == r.id) {
                return Err(invalid(
                    format!("recipe[{i}].id"),
                    format!("{} appears twice", r.id),
                ));
            }
            positive(r.speed_rpm, format!("recipe[{i}].speed_rpm"))
                .map_err(|(key, reason)| invalid(key, reason))?;
            if !(0.0..=2.0).contains(&r.load) {
                return Err(invalid(
                    format!("recipe[{i}].load"),
                    format!(
                        "is {}; must be within 0..=2 (fraction of full load)",
                        r.load
                    ),
                ));
            }
        }
        let initial_recipe = match self.initial_recipe {
            None => 0,
            Some(id) => recipes.iter().position(|r| r.id == id).ok_or_else(|| {
                invalid(
                    "initial_recipe".into(),
                    format!("{id} is not one of the [[recipe]] ids"),
                )
            })?,
        };

        let mut events = Vec::with_capacity(self.events.len());
        for (i, e) in self.events.into_iter().enumerate() {
            let kind = match e.kind {
                KindName::RecipeChange => {
                    let Some(recipe) = e.recipe else {
                        return Err(invalid(
                            format!("event[{i}].recipe"),
                            "is required for kind = \"recipe_change\"".into(),
                        ));
                    };
                    if !recipes.iter().any(|r| r.id == recipe) {
                        return Err(invalid(
                            format!("event[{i}].recipe"),
                            format!("{recipe} is not one of the [[recipe]] ids"),
                        ));
                    }
                    EventKind::RecipeChange { recipe }
                }
                KindName::Imbalance => EventKind::Imbalance,
                KindName::BearingOuterRace => EventKind::BearingOuterRace,
                KindName::BearingInnerRace => EventKind::BearingInnerRace,
                KindName::SensorStuck => EventKind::SensorStuck,
                KindName::SensorDrift => EventKind::SensorDrift,
                KindName::SensorSpike => EventKind::SensorSpike,
                KindName::SensorDropout => EventKind::SensorDropout,
                KindName::SensorNoise => EventKind::SensorNoise,
            };
            if e.recipe.is_some() && !matches!(kind, EventKind::RecipeChange { .. }) {
                return Err(invalid(
                    format!("event[{i}].recipe"),
                    format!(
                        "is only for kind = \"recipe_change\", not \"{}\"",
                        kind.name()
                    ),
                ));
            }
            let sensor = match (&e.sensor, kind.is_sensor_fault()) {
                (None, false) => None,
                (Some(_), false) => {
                    return Err(invalid(
                        format!("event[{i}].sensor"),
                        format!("is only for sensor faults, not \"{}\"", kind.name()),
                    ));
                }
                (None, true) => {
                    return Err(invalid(
                        format!("event[{i}].sensor"),
                        format!("is required for kind = \"{}\"", kind.name()),
                    ));
                }
                (Some(name), true) => match channel_index(name) {
                    Some(ch) if channel::SENSORS.contains(&ch) => Some(ch),
                    Some(_) => {
                        return Err(invalid(
                            format!("event[{i}].sensor"),
                            format!("\"{name}\" is an operating-context tag, not a sensor"),
                        ));
                    }
                    None => {
                        let sensors: Vec<&str> =
                            CHANNELS[channel::SENSORS].iter().map(|c| c.name).collect();
                        return Err(invalid(
                            format!("event[{i}].sensor"),
                            format!(
                                "\"{name}\" is not a sensor; sensors are {}",
                                sensors.join(", ")
                            ),
                        ));
                    }
                },
            };
            let severity = e.severity.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&severity) {
                return Err(invalid(
                    format!("event[{i}].severity"),
                    format!("is {severity}; must be within 0..=1"),
                ));
            }
            if e.ramp.is_some() && !kind.takes_ramp() {
                return Err(invalid(
                    format!("event[{i}].ramp"),
                    format!("means nothing for kind = \"{}\"", kind.name()),
                ));
            }
            let ramp = match (kind, e.ramp) {
                (_, Some(ramp)) => ramp,
                (EventKind::SensorDrift, None) => DEFAULT_DRIFT_RAMP,
                (_, None) => Duration::ZERO,
            };
            if kind == EventKind::SensorDrift && ramp.is_zero() {
                return Err(invalid(
                    format!("event[{i}].ramp"),
                    "must be positive for a drift (the time per span of offset)".into(),
                ));
            }
            events.push(Event {
                at: e.at,
                kind,
                sensor,
                severity,
                ramp,
                duration: e.duration,
            });
        }
        // Stable: events at the same instant keep their file order.
        events.sort_by_key(|e| e.at);

        Ok(Scenario {
            name: self.name,
            description: self.description,
            origin,
            machine: self.machine,
            recipes,
            initial_recipe,
            events,
        })
    }
}

fn positive(value: f64, key: String) -> Result<(), (String, String)> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err((key, format!("is {value}; must be a positive number")))
    }
}

fn non_negative(value: f64, key: String) -> Result<(), (String, String)> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err((key, format!("is {value}; must be zero or more")))
    }
}

fn check_machine(m: &Machine) -> Result<(), (String, String)> {
    let key = |k: &str| format!("machine.{k}");
    positive(m.rated_speed_rpm, key("rated_speed_rpm"))?;
    positive(m.mains_hz, key("mains_hz"))?;
    non_negative(m.no_load_current_a, key("no_load_current_a"))?;
    positive(m.full_load_current_a, key("full_load_current_a"))?;
    if m.full_load_current_a < m.no_load_current_a {
        return Err((
            key("full_load_current_a"),
            format!(
                "is {} A, below no_load_current_a ({} A)",
                m.full_load_current_a, m.no_load_current_a
            ),
        ));
    }
    positive(m.rated_pressure_bar, key("rated_pressure_bar"))?;
    positive(m.rated_flow_l_min, key("rated_flow_l_min"))?;
    if !m.ambient_c.is_finite() || !(-50.0..=80.0).contains(&m.ambient_c) {
        return Err((
            key("ambient_c"),
            format!("is {}; must be within -50..=80 Cel", m.ambient_c),
        ));
    }
    if m.thermal_tau.is_zero() {
        return Err((key("thermal_tau"), "must be positive".into()));
    }
    non_negative(m.temp_rise_load_c, key("temp_rise_load_c"))?;
    non_negative(m.temp_rise_speed_c, key("temp_rise_speed_c"))?;
    non_negative(m.temp_rise_wear_c, key("temp_rise_wear_c"))?;
    non_negative(m.imbalance_mm_s, key("imbalance_mm_s"))?;
    non_negative(m.misalignment_mm_s, key("misalignment_mm_s"))?;
    non_negative(m.imbalance_fault_mm_s, key("imbalance_fault_mm_s"))?;
    non_negative(m.bearing_impact_mm_s, key("bearing_impact_mm_s"))?;
    positive(m.resonance_hz, key("resonance_hz"))?;
    if !(m.resonance_damping > 0.0 && m.resonance_damping < 1.0) {
        return Err((
            key("resonance_damping"),
            format!("is {}; must be within 0 < ζ < 1", m.resonance_damping),
        ));
    }
    non_negative(m.vibration_noise_mm_s, key("vibration_noise_mm_s"))?;
    if !(0.0..0.5).contains(&m.variation) {
        return Err((
            key("variation"),
            format!("is {}; must be within 0..0.5", m.variation),
        ));
    }
    let b = &m.bearing;
    if b.balls < 3 {
        return Err((
            key("bearing.balls"),
            format!("is {}; a bearing has at least 3", b.balls),
        ));
    }
    positive(b.ball_diameter_mm, key("bearing.ball_diameter_mm"))?;
    positive(b.pitch_diameter_mm, key("bearing.pitch_diameter_mm"))?;
    if b.ball_diameter_mm >= b.pitch_diameter_mm {
        return Err((
            key("bearing.ball_diameter_mm"),
            format!(
                "is {} mm, not below the pitch diameter ({} mm)",
                b.ball_diameter_mm, b.pitch_diameter_mm
            ),
        ));
    }
    if !(0.0..=45.0).contains(&b.contact_angle_deg) {
        return Err((
            key("bearing.contact_angle_deg"),
            format!("is {}; must be within 0..=45", b.contact_angle_deg),
        ));
    }
    Ok(())
}

/// Humantime durations (`"90s"`, `"5m"`, `"1h 30m"`) in serde.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    fn parse<E: Error>(text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!(
                "invalid duration \"{text}\": {e} (write e.g. \"90s\", \"5m\", \"1h 30m\")"
            ))
        })
    }

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text)
    }

    pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_scenario_parses_and_is_named_after_its_file() {
        for name in Scenario::NAMES {
            let s = Scenario::named(name).unwrap();
            assert_eq!(s.name(), name);
            assert!(!s.description().is_empty(), "{name}");
            assert!(s.origin().contains(&format!("{name}.toml")));
        }
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = Scenario::named("chaos").unwrap_err().to_string();
        assert!(err.contains("`chaos`"), "{err}");
        for name in Scenario::NAMES {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn defaults_fill_an_almost_empty_file() {
        let s = Scenario::from_toml_str("name = \"x\"").unwrap();
        assert_eq!(s.machine(), &Machine::default());
        assert_eq!(s.initial_recipe().speed_rpm, 1480.0);
        assert!(s.events().is_empty());
    }

    #[test]
    fn events_are_sorted_and_defaulted() {
        let s = Scenario::from_toml_str(
            r#"
            name = "x"
            [[recipe]]
            id = 7
            speed_rpm = 1000.0
            load = 0.5
            [[event]]
            at = "2m"
            kind = "sensor_drift"
            sensor = "pressure"
            [[event]]
            at = "30s"
            kind = "bearing_inner_race"
            severity = 0.5
            ramp = "10m"
            "#,
        )
        .unwrap();
        let e = s.events();
        assert_eq!(e[0].kind, EventKind::BearingInnerRace);
        assert_eq!(e[0].at, Duration::from_secs(30));
        assert_eq!(e[0].ramp, Duration::from_secs(600));
        assert_eq!(e[0].sensor, None);
        assert_eq!(e[1].kind, EventKind::SensorDrift);
        assert_eq!(e[1].sensor, Some(channel::PRESSURE));
        assert_eq!(e[1].ramp, DEFAULT_DRIFT_RAMP);
        assert_eq!(e[1].severity, 1.0);
        assert_eq!(e[1].duration, None);
    }

    fn err_of(text: &str) -> String {
        Scenario::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err_of("name = \"x\"\n[machine]\nrated_sped_rpm = 3.0\n");
        assert!(
            e.contains("rated_sped_rpm") && e.contains("<string>"),
            "{e}"
        );
        let e = err_of("name = \"x\"\n[machine]\nthermal_tau = \"ten minutes\"\n");
        assert!(
            e.contains("thermal_tau") && e.contains("invalid duration"),
            "{e}"
        );
        let e = err_of("name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"sensor_stuck\"\n");
        assert!(e.contains("`event[0].sensor` is required"), "{e}");
        let e = err_of(
            "name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"sensor_stuck\"\nsensor = \"recipe\"\n",
        );
        assert!(e.contains("operating-context tag"), "{e}");
        let e = err_of(
            "name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"sensor_spike\"\nsensor = \"temp\"\n",
        );
        assert!(
            e.contains("`event[0].sensor`") && e.contains("temperature"),
            "{e}"
        );
        let e =
            err_of("name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"recipe_change\"\nrecipe = 9\n");
        assert!(e.contains("`event[0].recipe` 9 is not one"), "{e}");
        let e =
            err_of("name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"imbalance\"\nseverity = 2.0\n");
        assert!(e.contains("`event[0].severity`"), "{e}");
        let e = err_of("name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"meltdown\"\n");
        assert!(e.contains("meltdown"), "{e}");
        let e = err_of("name = \"x\"\n[machine.bearing]\nball_diameter_mm = 50.0\n");
        assert!(e.contains("`machine.bearing.ball_diameter_mm`"), "{e}");
        let e = err_of(
            "name = \"x\"\n[[recipe]]\nid = 1\nspeed_rpm = 1.0\nload = 0.5\n[[recipe]]\nid = 1\nspeed_rpm = 2.0\nload = 0.5\n",
        );
        assert!(e.contains("`recipe[1].id` 1 appears twice"), "{e}");
        let e = err_of(
            "name = \"x\"\n[[event]]\nat = \"1s\"\nkind = \"sensor_stuck\"\nsensor = \"flow\"\nramp = \"1s\"\n",
        );
        assert!(e.contains("`event[0].ramp` means nothing"), "{e}");
    }
}
