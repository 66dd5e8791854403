//! `docs/configuration.md` against the programs themselves, so that the reference cannot drift:
//! every config key (`--print-config`, plus the unset options that only `--help` shows), every
//! flag, environment variable and default of `--help` must appear in the table of the right
//! program's section. The shipped example files must pass `--check-config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::bin;

const DOC: &str = "docs/configuration.md";

/// Flags that are not config keys.
const COMMAND_LINE_ONLY: [&str; 7] = [
    "api",
    "config",
    "print_config",
    "check_config",
    "export_bootstrap_model",
    "help",
    "version",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn doc() -> String {
    std::fs::read_to_string(root().join(DOC)).unwrap_or_else(|e| panic!("reading {DOC}: {e}"))
}

/// Runs `program` in the workspace root, without any `LOOPLINE_*` variable of the test's own
/// environment (they would change what `--print-config` and `--help` show), and returns its
/// stdout, failing the test when it does not succeed.
fn stdout_of(program: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(root());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOOPLINE_") {
            cmd.env_remove(name);
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} exited with {}:\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The part of the doc under the heading `## {heading}`, up to the next `## ` heading.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start_marker = format!("\n## {heading}\n");
    let start = doc
        .find(&start_marker)
        .unwrap_or_else(|| panic!("{DOC} has no section `## {heading}`"))
        + 1;
    let end = doc[start + 3..]
        .find("\n## ")
        .map_or(doc.len(), |i| start + 3 + i);
    &doc[start..end]
}

/// Table rows of a section, each split into its trimmed cells.
fn rows(section: &str) -> Vec<Vec<&str>> {
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The row that documents `needle` (a `` `key` `` or `` `--flag` ``): the first whose first
/// cell names it, else the first whose second cell does (a key's row names its flag second).
fn row_naming<'r, 'a>(rows: &'r [Vec<&'a str>], needle: &str) -> Option<&'r Vec<&'a str>> {
    let names = |cell: Option<&&str>| cell.is_some_and(|c| c.split(", ").any(|n| n == needle));
    rows.iter()
        .find(|row| names(row.first()))
        .or_else(|| rows.iter().find(|row| names(row.get(1))))
}

/// One option as `--help` lists it.
#[derive(Debug)]
struct HelpOption {
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

/// The options of a clap `--help` text: each starts on a line whose first non-blank character
/// is `-` (`-c, --config <FILE>`); its description runs to the next such line.
fn help_options(help: &str) -> Vec<HelpOption> {
    let body = help
        .split_once("\nOptions:\n")
        .map(|(_, body)| body)
        .expect("--help has an Options: list");
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        let trimmed = line.trim_start();
        // `-c, --config` or `--lake`; not `- local: …`, a value's description.
        let is_flag = trimmed.starts_with("--")
            || (trimmed.starts_with('-')
                && trimmed
                    .chars()
                    .nth(1)
                    .is_some_and(|c| c.is_ascii_alphabetic()));
        if is_flag {
            let flag = trimmed
                .split_whitespace()
                .map(|token| token.trim_end_matches(','))
                .take_while(|token| token.starts_with('-') || token.starts_with('<'))
                .find(|token| token.starts_with("--"))
                .unwrap_or_else(|| panic!("no long flag in the --help line {line:?}"));
            blocks.push((flag.to_owned(), String::new()));
        }
        if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    let between = |text: &str, open: &str, close: char| {
        text.split_once(open)
            .and_then(|(_, rest)| rest.split_once(close))
            .map(|(value, _)| value.to_owned())
    };
    blocks
        .into_iter()
        .map(|(flag, text)| HelpOption {
            env: between(&text, "[env: ", '='),
            default: between(&text, "[default: ", ']'),
            flag,
        })
        .collect()
}

/// `key = value` pairs of `--print-config` output, strings without their quotes; a key of a
/// `[table]` is named `table.key`.
fn printed_config(toml: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    toml.lines()
        .filter_map(|line| {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = format!("{name}.");
                return None;
            }
            line.starts_with(|c: char| c.is_ascii_lowercase())
                .then(|| line.split_once(" = "))
                .flatten()
                .map(|(key, value)| (format!("{table}{}", key.trim()), value))
        })
        .map(|(key, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.contains(['"', '\\']))
                .unwrap_or(value);
            (key, value.to_owned())
        })
        .collect()
}

/// What `--help` says that the section's tables do not: every flag needs a row, with the
/// flag's environment variable and its `[default: …]`.
fn undocumented_flags(heading: &str, section: &str, options: &[HelpOption]) -> Vec<String> {
    let rows = rows(section);
    let mut problems = Vec::new();
    for option in options {
        let Some(row) = row_naming(&rows, &format!("`{}`", option.flag)) else {
            problems.push(format!("flag `{}` has no table row", option.flag));
            continue;
        };
        let line = row.join(" | ");
        if let Some(env) = &option.env
            && !line.contains(&format!("`{env}`"))
        {
            problems.push(format!(
                "the row of `{}` does not name its environment variable `{env}`",
                option.flag
            ));
        }
        if let Some(default) = &option.default
            && !line.contains(default.as_str())
        {
            problems.push(format!(
                "the row of `{}` does not give its default `{default}` (from --help)",
                option.flag
            ));
        }
    }
    problems
        .into_iter()
        .map(|p| format!("## {heading}: {p}"))
        .collect()
}

/// Checks the section of a program with config keys: its flags, and a row per key with the
/// default that `--print-config` shows.
fn check_program(heading: &str, program: &Path) {
    check_command(heading, program, &[]);
}

/// [`check_program`] for `program <subcommand…>`. Keys of nested tables (`retry.backoff_base`)
/// are set in the file only: they need a row (their own, or a `` `table.*` `` row naming them)
/// but no flag.
fn check_command(heading: &str, program: &Path, subcommand: &[&str]) {
    let doc = doc();
    let section = section(&doc, heading);
    let with =
        |flag: &'static str| -> Vec<&str> { subcommand.iter().copied().chain([flag]).collect() };
    let options = help_options(&stdout_of(program, &with("--help")));
    assert!(options.len() > 5, "too few options parsed: {options:?}");
    let printed = printed_config(&stdout_of(program, &with("--print-config")));
    assert!(printed.len() > 5, "too few keys parsed: {printed:?}");

    let mut problems = undocumented_flags(heading, section, &options);
    // Every key has a flag, so `--help` also names the keys that `--print-config` leaves out
    // while they are unset (`report_file`, ...).
    let flag_keys: BTreeSet<String> = options
        .iter()
        .map(|o| o.flag.trim_start_matches("--").replace('-', "_"))
        .filter(|key| !COMMAND_LINE_ONLY.contains(&key.as_str()))
        .collect();
    let nested = |key: &str| key.contains('.');
    for (key, _) in &printed {
        if !nested(key) && !flag_keys.contains(key) {
            problems.push(format!(
                "## {heading}: key `{key}` of --print-config has no flag in --help"
            ));
        }
    }
    let keys: BTreeSet<&str> = flag_keys
        .iter()
        .map(String::as_str)
        .chain(printed.iter().map(|(key, _)| key.as_str()))
        .collect();
    let rows = rows(section);
    for key in keys {
        let own_row = rows
            .iter()
            .any(|row| row.first() == Some(&format!("`{key}`").as_str()));
        let in_table_row = key.split_once('.').is_some_and(|(table, name)| {
            rows.iter().any(|row| {
                row.first() == Some(&format!("`{table}.*`").as_str())
                    && row.join(" ").contains(&format!("`{name}`"))
            })
        });
        if !own_row && !in_table_row {
            problems.push(format!("## {heading}: key `{key}` has no table row"));
        }
    }
    for (key, value) in &printed {
        if let Some(row) = rows
            .iter()
            .find(|row| row.first() == Some(&format!("`{key}`").as_str()))
            && !row.iter().any(|cell| cell.contains(&format!("`{value}`")))
        {
            problems.push(format!(
                "## {heading}: the row of `{key}` does not give its default `{value}` (from --print-config)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{DOC} is out of date:\n{}",
        problems.join("\n")
    );
}

fn agent() -> PathBuf {
    bin("loopline-agent", "loopline-agent")
}

fn ingest() -> PathBuf {
    bin("loopline-ingest", "loopline-ingest")
}

#[test]
fn agent_keys_and_flags_are_documented() {
    check_program("loopline-agent", &agent());
}

#[test]
fn ingest_keys_and_flags_are_documented() {
    check_program("loopline-ingest", &ingest());
}

#[test]
fn dispatch_keys_and_flags_are_documented() {
    check_command(
        "loopline-dispatch",
        &bin("loopline-dispatch", "loopline-dispatch"),
        &["serve"],
    );
}

#[test]
fn flag_only_commands_are_documented() {
    let loopline = bin("loopline", "loopline");
    let doc = doc();
    let mut problems = Vec::new();
    let train = bin("loopline-trainer", "loopline-train");
    let flag_tables: [(&str, &Path, &[&str]); 5] = [
        ("loopline demo", &loopline, &["demo"]),
        ("loopline broker", &loopline, &["broker"]),
        ("loopline healthcheck", &loopline, &["healthcheck"]),
        ("loopline-train", &train, &[]),
        ("loopline-train annotate", &train, &["annotate"]),
    ];
    for (heading, program, subcommand) in flag_tables {
        let args: Vec<&str> = subcommand.iter().copied().chain(["--help"]).collect();
        let options = help_options(&stdout_of(program, &args));
        assert!(!options.is_empty(), "no options parsed for {heading}");
        problems.extend(undocumented_flags(
            heading,
            section(&doc, heading),
            &options,
        ));
    }
    assert!(
        problems.is_empty(),
        "{DOC} is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn agent_example_file_passes_check_config() {
    let out = stdout_of(
        &agent(),
        &[
            "--config",
            "edge-agent/agent.example.toml",
            "--check-config",
        ],
    );
    assert!(out.contains("configuration is valid"), "{out}");
}

#[test]
fn ingest_example_in_the_doc_passes_check_config() {
    let doc = doc();
    let example = section(&doc, "loopline-ingest")
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(toml, _)| toml)
        .expect("a ```toml example in ## loopline-ingest");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.toml");
    std::fs::write(&path, example).unwrap();
    let out = stdout_of(
        &ingest(),
        &["--config", path.to_str().unwrap(), "--check-config"],
    );
    assert!(out.contains("configuration is valid"), "{out}");
}
