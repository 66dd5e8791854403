//! Operator annotations: what the people at the line say about a span of time.
//!
//! A small table beside the telemetry, one file per annotation, never rewritten:
//! `<lake>/annotations/site=S/line=L/annotations-<created_us>.parquet` with columns
//! `start_ts`, `end_ts` (timestamp us UTC), `device` (nullable: null is the whole line),
//! `label` (`fault`, `exclude` or `normal`), `note`, `author` and `created_at` (timestamp us
//! UTC). Appending a file is the whole write protocol: written under a temporary name that
//! starts with `.` (readers skip it), fsynced, renamed, and the folder fsynced, so a reader sees
//! an annotation whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

use crate::cli::{AnnotationLabel, check_name, check_range};
use crate::error::{Result, TrainError};
use crate::lake::{Columns, parquet_files, read_batches};

/// The table's folder under the lake root.
pub const TABLE: &str = "annotations";

/// One annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Start of the span, µs since the epoch, inclusive.
    pub start_us: i64,
    /// End of the span, exclusive.
    pub end_us: i64,
    /// The device it concerns; `None` for the whole line.
    pub device: Option<String>,
    pub label: AnnotationLabel,
    pub note: String,
    pub author: String,
    /// When it was written, µs since the epoch.
    pub created_us: i64,
}

impl Annotation {
    /// Whether it covers `device` over any part of `[start_us, end_us]`.
    pub fn covers(&self, device: &str, start_us: i64, end_us: i64) -> bool {
        self.device.as_deref().is_none_or(|d| d == device)
            && self.start_us <= end_us
            && self.end_us > start_us
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("start_ts", ts_type(), false),
        Field::new("end_ts", ts_type(), false),
        Field::new("device", DataType::Utf8, true),
        Field::new("label", DataType::Utf8, false),
        Field::new("note", DataType::Utf8, false),
        Field::new("author", DataType::Utf8, false),
        Field::new("created_at", ts_type(), false),
    ]))
}

/// The folder holding a line's annotations.
pub fn line_dir(lake: &Path, site: &str, line: &str) -> PathBuf {
    lake.join(TABLE)
        .join(format!("site={site}"))
        .join(format!("line={line}"))
}

/// Appends `annotation` to the line's table and returns the file written. Two annotations
/// created in the same microsecond get distinct files (the later one's name moves on).
pub fn append(lake: &Path, site: &str, line: &str, annotation: &Annotation) -> Result<PathBuf> {
    check_name("--site", site)?;
    check_name("--line", line)?;
    if let Some(device) = &annotation.device {
        check_name("--device", device)?;
    }
    check_range(annotation.start_us, annotation.end_us)?;
    let dir = line_dir(lake, site, line);
    std::fs::create_dir_all(&dir).map_err(TrainError::io(&dir))?;
    let ts = |v: i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"))
    };
    let text = |v: Option<&str>| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            ts(annotation.start_us),
            ts(annotation.end_us),
            text(annotation.device.as_deref()),
            text(Some(annotation.label.as_str())),
            text(Some(&annotation.note)),
            text(Some(&annotation.author)),
            ts(annotation.created_us),
        ],
    )
    .map_err(|e| TrainError::Internal(format!("annotation batch: {e}")))?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema(), None)
        .map_err(|e| TrainError::Internal(format!("annotation writer: {e}")))?;
    writer
        .write(&batch)
        .and_then(|()| writer.close().map(|_| ()))
        .map_err(|e| TrainError::Internal(format!("annotation writer: {e}")))?;

    let mut created = annotation.created_us;
    loop {
        let path = dir.join(format!("annotations-{created}.parquet"));
        let tmp = dir.join(format!(".annotations-{created}.parquet.tmp"));
        if path.exists() {
            created += 1;
            continue;
        }
        write_durable(&tmp, &path, &bytes)?;
        return Ok(path);
    }
}

/// Writes `bytes` to `tmp`, fsyncs, renames it to `path` and fsyncs the folder.
pub(crate) fn write_durable(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(tmp).map_err(TrainError::io(tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(TrainError::io(tmp))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(TrainError::io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(TrainError::io(dir))?;
    }
    Ok(())
}

/// Every annotation of the line overlapping `[from_us, to_us)`, oldest written first.
pub fn read(
    lake: &Path,
    site: &str,
    line: &str,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<Annotation>> {
    let mut out = Vec::new();
    for path in parquet_files(&line_dir(lake, site, line))? {
        let columns = [
            "start_ts",
            "end_ts",
            "device",
            "label",
            "note",
            "author",
            "created_at",
        ];
        for batch in &read_batches(&path, &columns)? {
            let cols = Columns { path: &path, batch };
            let start = cols.timestamps("start_ts")?;
            let end = cols.timestamps("end_ts")?;
            let created = cols.timestamps("created_at")?;
            let device = cols.strings("device", true)?;
            let label = cols.strings("label", false)?;
            let note = cols.strings("note", true)?;
            let author = cols.strings("author", true)?;
            for i in 0..batch.num_rows() {
                let name = label.get(i).unwrap_or_default();
                let Some(label) = AnnotationLabel::from_name(name) else {
                    return Err(TrainError::bad_input(
                        &path,
                        format!("row {i}: label `{name}` is not fault, exclude or normal"),
                    ));
                };
                let (s, e) = (start.value(i), end.value(i));
                if e <= from_us || s >= to_us {
                    continue;
                }
                out.push(Annotation {
                    start_us: s,
                    end_us: e,
                    device: device.get(i).map(str::to_owned),
                    label,
                    note: note.get(i).unwrap_or_default().to_owned(),
                    author: author.get(i).unwrap_or_default().to_owned(),
                    created_us: created.value(i),
                });
            }
        }
    }
    out.sort_by_key(|a| (a.created_us, a.start_us));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(start: i64, end: i64, device: Option<&str>, label: AnnotationLabel) -> Annotation {
        Annotation {
            start_us: start,
            end_us: end,
            device: device.map(str::to_owned),
            label,
            note: "seen at the pump".into(),
            author: "op".into(),
            created_us: 7,
        }
    }

    #[test]
    fn annotations_round_trip_and_filter_by_range() {
        let lake = tempfile::tempdir().unwrap();
        let a = note(100, 200, Some("pump-1"), AnnotationLabel::Fault);
        let b = note(300, 400, None, AnnotationLabel::Exclude);
        let pa = append(lake.path(), "s", "l", &a).unwrap();
        let pb = append(lake.path(), "s", "l", &b).unwrap();
        assert_ne!(pa, pb, "same created_at, distinct files");
        let all = read(lake.path(), "s", "l", 0, 1000).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], a);
        assert_eq!(all[1].device, None);
        assert_eq!(all[1].label, AnnotationLabel::Exclude);
        assert_eq!(read(lake.path(), "s", "l", 200, 300).unwrap(), vec![]);
        assert!(read(lake.path(), "s", "other", 0, 1000).unwrap().is_empty());
        assert!(all[1].covers("pump-9", 350, 360));
        assert!(!all[0].covers("pump-9", 150, 160));
        assert!(all[0].covers("pump-1", 150, 160));
    }

    #[test]
    fn a_bad_span_or_name_is_refused() {
        let lake = tempfile::tempdir().unwrap();
        let err = append(
            lake.path(),
            "s",
            "l",
            &note(5, 5, None, AnnotationLabel::Normal),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = append(
            lake.path(),
            "s",
            "l",
            &note(1, 5, Some("a/b"), AnnotationLabel::Normal),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--device"), "{err}");
    }
}
