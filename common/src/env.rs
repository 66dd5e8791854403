//! Environment variables that look like a binary's settings but are none of them.
//!
//! Design invariant: a `LOOPLINE_<BINARY>_*` variable that the binary does not read is an
//! error, not silence. A misspelt `LOOPLINE_INGEST_ROL_ROWS` in a compose file or a systemd
//! `EnvironmentFile` would otherwise leave the default in force with nothing said, which is
//! exactly the drift `--check-config` exists to catch.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;

/// `LOOPLINE_*` variables under a binary's own prefix that none of its settings reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEnv {
    /// Each unknown variable with the closest known one, if any is close.
    pub unknown: Vec<(String, Option<String>)>,
    /// The prefixes that were checked, e.g. `LOOPLINE_INGEST_`.
    pub prefixes: Vec<String>,
}

impl fmt::Display for UnknownEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .unknown
            .iter()
            .map(|(name, near)| match near {
                Some(near) => format!("{name} (did you mean {near}?)"),
                None => name.clone(),
            })
            .collect();
        write!(
            f,
            "environment variable{} {} {} not a setting of this program (its variables start with {}; --help lists them)",
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            if names.len() == 1 { "is" } else { "are" },
            self.prefixes.join(" or ")
        )
    }
}

impl std::error::Error for UnknownEnv {}

/// Every environment variable the command's arguments read, subcommands included.
pub fn known_vars(command: &clap::Command) -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    collect(command, &mut known);
    known
}

fn collect(command: &clap::Command, known: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(name) = arg.get_env() {
            known.insert(name.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        collect(sub, known);
    }
}

/// Checks the process environment: every variable under one of `prefixes` must be one that
/// `command` reads.
pub fn check(command: &clap::Command, prefixes: &[&str]) -> Result<(), UnknownEnv> {
    check_vars(
        &known_vars(command),
        prefixes,
        std::env::vars_os().map(|(name, _)| name),
    )
}

/// [`check`] over given variable names (pure, for tests).
pub fn check_vars(
    known: &BTreeSet<String>,
    prefixes: &[&str],
    names: impl IntoIterator<Item = OsString>,
) -> Result<(), UnknownEnv> {
    let mut unknown: Vec<(String, Option<String>)> = names
        .into_iter()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !known.contains(name))
        .filter_map(|name| {
            let prefix = prefixes.iter().find(|p| name.starts_with(*p))?;
            let near = closest(&name, prefix, known);
            Some((name, near))
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    Err(UnknownEnv {
        unknown,
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// The known name closest to `name`, if it is close enough to be a misspelling. Names are
/// compared without their shared prefix, which would make any two look alike.
fn closest(name: &str, prefix: &str, known: &BTreeSet<String>) -> Option<String> {
    let tail = name.strip_prefix(prefix).unwrap_or(name);
    known
        .iter()
        .filter_map(|k| {
            let k_tail = k.strip_prefix(prefix)?;
            Some((strsim::normalized_damerau_levenshtein(tail, k_tail), k))
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        [
            "LOOPLINE_INGEST_ROLL_ROWS",
            "LOOPLINE_INGEST_LAKE",
            "LOOPLINE_BROKER",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    #[test]
    fn known_and_foreign_variables_pass() {
        let names = [
            "LOOPLINE_INGEST_LAKE",
            "LOOPLINE_AGENT_SITE",
            "PATH",
            "LOOPLINE_BROKER",
        ];
        let got = check_vars(&known(), &["LOOPLINE_INGEST_"], names.map(OsString::from));
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn a_misspelt_variable_is_named_with_its_likely_meaning() {
        let names = ["LOOPLINE_INGEST_ROL_ROWS", "LOOPLINE_INGEST_COLOUR"];
        let err = check_vars(&known(), &["LOOPLINE_INGEST_"], names.map(OsString::from))
            .expect_err("unknown variables");
        assert_eq!(
            err.unknown,
            vec![
                ("LOOPLINE_INGEST_COLOUR".to_owned(), None),
                (
                    "LOOPLINE_INGEST_ROL_ROWS".to_owned(),
                    Some("LOOPLINE_INGEST_ROLL_ROWS".to_owned())
                ),
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("LOOPLINE_INGEST_ROL_ROWS (did you mean LOOPLINE_INGEST_ROLL_ROWS?)"),
            "{text}"
        );
        assert!(text.contains("start with LOOPLINE_INGEST_"), "{text}");
    }

    #[test]
    fn subcommands_arguments_are_known() {
        let command = clap::Command::new("x")
            .arg(clap::Arg::new("a").long("a").env("LOOPLINE_X_A"))
            .subcommand(
                clap::Command::new("sub").arg(clap::Arg::new("b").long("b").env("LOOPLINE_X_B")),
            );
        let known = known_vars(&command);
        assert!(known.contains("LOOPLINE_X_A") && known.contains("LOOPLINE_X_B"));
    }
}
