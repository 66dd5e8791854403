//! The lake's partition layout as its readers walk it:
//! `<lake>/<table>/site=<site>/line=<line>/date=<YYYY-MM-DD>/hour=<H>/*.parquet`.
//!
//! Design invariants: pruning skips a partition only when its whole hour lies outside the
//! range, so no row in the range is ever missed; files whose names start with `.` or `_`
//! (ingest's temporaries, engines' markers) are never data; a table or line without a folder
//! yet holds no files rather than being an error.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

/// Microseconds in an hour: the partition grain.
pub const HOUR_US: i64 = 3_600_000_000;

/// A folder of the lake that could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct LakeIoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The Parquet files of `table` for `site`/`line` whose hour partition overlaps
/// `[from_us, to_us)`, sorted by path.
pub fn partition_files(
    lake: &Path,
    table: &str,
    site: &str,
    line: &str,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<PathBuf>, LakeIoError> {
    let root = lake
        .join(table)
        .join(format!("site={site}"))
        .join(format!("line={line}"));
    let overlaps = |start: i64, len: i64| start < to_us && start + len > from_us;
    let mut files = Vec::new();
    for (date_dir, date) in sub_dirs(&root, "date=")? {
        let Some(day_start) = NaiveDate::parse_from_str(&date, "%Y-%m-%d")
            .ok()
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
        else {
            continue;
        };
        if !overlaps(day_start, 24 * HOUR_US) {
            continue;
        }
        for (hour_dir, hour) in sub_dirs(&date_dir, "hour=")? {
            let Ok(hour) = hour.parse::<i64>() else {
                continue;
            };
            if overlaps(day_start + hour * HOUR_US, HOUR_US) {
                files.extend(parquet_files(&hour_dir)?);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The data files directly in `dir` (`*.parquet`, not starting with `.` or `_`), sorted; none
/// when `dir` is absent.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, LakeIoError> {
    let mut out: Vec<PathBuf> = entries(dir)?
        .into_iter()
        .filter(|(name, _, _)| {
            !name.starts_with('.') && !name.starts_with('_') && name.ends_with(".parquet")
        })
        .map(|(_, path, _)| path)
        .collect();
    out.sort();
    Ok(out)
}

/// Sub-folders of `dir` named `<prefix><value>`, with the value; none when `dir` is absent.
fn sub_dirs(dir: &Path, prefix: &str) -> Result<Vec<(PathBuf, String)>, LakeIoError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|(_, _, is_dir)| *is_dir)
        .filter_map(|(name, path, _)| Some((path, name.strip_prefix(prefix)?.to_owned())))
        .collect())
}

/// (name, path, is a folder) of each entry of `dir` with a UTF-8 name; none when `dir` is absent.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, LakeIoError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LakeIoError { path, source }
    };
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in listing {
        let entry = entry.map_err(io(dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dir = entry.file_type().map_err(io(&entry.path()))?.is_dir();
        out.push((name, entry.path(), is_dir));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_overlapping_hours_and_only_data_files() {
        let lake = tempfile::tempdir().unwrap();
        let base = lake.path().join("telemetry/site=s/line=l");
        for (date, hour) in [
            ("2026-01-01", "00"),
            ("2026-01-01", "01"),
            ("2026-01-02", "05"),
        ] {
            let dir = base.join(format!("date={date}/hour={hour}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("part-a-00000000.parquet"), b"x").unwrap();
            std::fs::write(dir.join(".part-a-00000001.parquet.tmp"), b"x").unwrap();
            std::fs::write(dir.join("_SUCCESS.parquet"), b"x").unwrap();
        }
        std::fs::create_dir_all(base.join("date=not-a-date/hour=00")).unwrap();
        std::fs::create_dir_all(
            lake.path()
                .join("telemetry/site=s/line=other/date=2026-01-01/hour=00"),
        )
        .unwrap();
        let t0 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
        let files = partition_files(
            lake.path(),
            "telemetry",
            "s",
            "l",
            t0 + HOUR_US + 5,
            t0 + 2 * HOUR_US,
        )
        .unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].to_string_lossy().contains("hour=01"), "{files:?}");
        // The range's end is exclusive: an hour starting at it is not read.
        let files = partition_files(lake.path(), "telemetry", "s", "l", t0, t0 + HOUR_US).unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].to_string_lossy().contains("hour=00"), "{files:?}");
        let all = partition_files(lake.path(), "telemetry", "s", "l", 0, i64::MAX / 2).unwrap();
        assert_eq!(all.len(), 3);
        assert!(
            partition_files(lake.path(), "inference", "s", "l", 0, i64::MAX / 2)
                .unwrap()
                .is_empty()
        );
    }
}
