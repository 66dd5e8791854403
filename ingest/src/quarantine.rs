//! The `quarantine` table: every message the lake could not take as it was, kept verbatim with
//! why, so nothing a device sent is lost and the cause can be found.
//!
//! A message lands here when it is rejected as a whole (undecodable, oversized, mismatched
//! with its topic, out of range: [`crate::validate::RejectReason`]), and also when it was
//! accepted but some of its inference, health or label rows were left out as out of range
//! (reason `partial_out_of_range`): its samples are in `telemetry`, and the whole message is
//! here so the rows left out can still be recovered. Either way the message is then
//! acknowledged like any other, once this file is committed, so the broker never redelivers
//! it forever and it never holds up good input.
//!
//! Columns, in file order: `received_at timestamp(us, UTC)` (this ingester's clock),
//! `ingest_id`, `topic`, `reason`, `detail`, `payload binary` (at most
//! `quarantine_max_payload_bytes`), `payload_bytes int64` (the message's full size; larger
//! than the payload's length when it was cut). Partitioned by the hour of `received_at`, and by
//! the site and line segments of the topic (percent-encoded where a segment is not a plain
//! name; `_unknown` when the topic has none). Rows of a file sorted by (received_at, topic).
//! Quarantine rows are at-least-once: a crash before the acknowledgement can repeat one.

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::table::{
    Interner, RowBuffer, TsRange, dict_type, sorted_order, take, timestamps, ts_type,
};

/// Name of the table's folder under the lake root.
pub const TABLE: &str = "quarantine";

/// Reason of an accepted message whose other-table rows were partly left out.
pub const PARTIAL_OUT_OF_RANGE: &str = "partial_out_of_range";

/// The partition segment for a topic that has no site or line.
pub const UNKNOWN: &str = "_unknown";

/// The Arrow schema of the table as Loopline writes it.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("received_at", ts_type(), false),
                Field::new("ingest_id", dict_type(), false),
                Field::new("topic", DataType::Utf8, false),
                Field::new("reason", dict_type(), false),
                Field::new("detail", DataType::Utf8, false),
                Field::new("payload", DataType::Binary, false),
                Field::new("payload_bytes", DataType::Int64, false),
            ]))
        })
        .clone()
}

/// One message to quarantine.
#[derive(Debug, Clone)]
pub struct QuarantineRow<'a> {
    pub received_at_us: i64,
    pub topic: &'a str,
    pub reason: &'a str,
    pub detail: &'a str,
    pub payload: &'a [u8],
}

/// The `(site, line)` partition of a quarantined message, from its topic's segments
/// `loopline/v1/<site>/<line>/…`, made safe as folder names.
pub fn partition_of(topic: &str) -> (String, String) {
    let mut segments = topic.split('/');
    let (Some("loopline"), Some(_version), Some(site), Some(line)) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return (UNKNOWN.to_owned(), UNKNOWN.to_owned());
    };
    (folder_value(site), folder_value(line))
}

/// `value` as a Hive partition value: ASCII letters, digits, `_`, `-` and `.` as they are,
/// every other byte (and a leading `.`) percent-encoded, as Hive and Spark escape them;
/// `_unknown` for the empty string.
fn folder_value(value: &str) -> String {
    if value.is_empty() {
        return UNKNOWN.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for (i, b) in value.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Quarantined messages of one partition waiting to become one file.
#[derive(Debug, Default)]
pub struct QuarantineBuffer {
    received_at: Vec<i64>,
    ingest_id: Vec<i32>,
    topic: Vec<Box<str>>,
    reason: Vec<i32>,
    detail: Vec<Box<str>>,
    payload: Vec<Box<[u8]>>,
    payload_bytes: Vec<i64>,
    ingest_ids: Interner,
    reasons: Interner,
    range: TsRange,
    heap: usize,
}

/// Fixed bytes one buffered row costs, besides its strings and payload.
const ROW_BYTES: usize = 8 + 4 + 16 + 4 + 16 + 16 + 8;

impl QuarantineBuffer {
    /// Buffers one message, its payload cut to `max_payload` bytes.
    pub fn push(&mut self, ingest_id: &str, row: &QuarantineRow<'_>, max_payload: usize) {
        let kept = &row.payload[..row.payload.len().min(max_payload)];
        self.range.add(row.received_at_us);
        self.received_at.push(row.received_at_us);
        self.ingest_id.push(self.ingest_ids.intern(ingest_id));
        self.topic.push(row.topic.into());
        self.reason.push(self.reasons.intern(row.reason));
        self.detail.push(row.detail.into());
        self.payload.push(kept.into());
        self.payload_bytes
            .push(i64::try_from(row.payload.len()).unwrap_or(i64::MAX));
        self.heap += ROW_BYTES + row.topic.len() + row.detail.len() + kept.len();
    }
}

impl RowBuffer for QuarantineBuffer {
    const TABLE: &'static str = TABLE;
    const PARTITION_TS: &'static str = "received_at";
    const SORTED_BY: &'static [&'static str] = &["received_at", "topic"];
    const DELTA_COLUMNS: &'static [&'static str] = &["received_at"];
    const PLAIN_COLUMNS: &'static [&'static str] = &["payload", "detail", "payload_bytes"];

    fn schema() -> SchemaRef {
        schema()
    }

    fn rows(&self) -> usize {
        self.received_at.len()
    }

    fn ts_range(&self) -> (i64, i64) {
        self.range.get()
    }

    fn heap_size(&self) -> usize {
        self.heap + self.ingest_ids.heap_size() + self.reasons.heap_size()
    }

    /// Sorted by (received_at, topic), then arrival order: a total, deterministic order.
    fn to_record_batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let order = sorted_order(self.received_at.len(), |i| {
            (self.received_at[i], &self.topic[i], i)
        });
        let strings = |column: &[Box<str>]| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                order.iter().map(|&i| &*column[i as usize]),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            timestamps(take(&order, &self.received_at)),
            self.ingest_ids.dictionary(take(&order, &self.ingest_id)),
            strings(&self.topic),
            self.reasons.dictionary(take(&order, &self.reason)),
            strings(&self.detail),
            Arc::new(BinaryArray::from_iter_values(
                order.iter().map(|&i| &*self.payload[i as usize]),
            )),
            Arc::new(Int64Array::from(take(&order, &self.payload_bytes))),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

/// One quarantined message read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedMessage {
    pub received_at_us: i64,
    pub ingest_id: String,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    pub payload: Vec<u8>,
    pub payload_bytes: i64,
}

/// Reads a quarantine file back, checking its columns.
pub fn read_file(
    path: &std::path::Path,
) -> Result<Vec<QuarantinedMessage>, crate::table::ReadError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMicrosecondType};

    let file = crate::table::FileBatches::read(path)?;
    let mut rows = Vec::new();
    for batch in &file.batches {
        let string_column = |name: &str| -> Result<Vec<String>, crate::table::ReadError> {
            let column = file.column(batch, name, &DataType::Utf8, false)?;
            Ok(column
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_owned())
                .collect())
        };
        let received = file.column(batch, "received_at", &ts_type(), false)?;
        let received = received.as_primitive::<TimestampMicrosecondType>();
        let ingest_ids = string_column("ingest_id")?;
        let topics = string_column("topic")?;
        let reasons = string_column("reason")?;
        let details = string_column("detail")?;
        let payload = file.column(batch, "payload", &DataType::Binary, false)?;
        let payload = payload.as_binary::<i32>();
        let sizes = file.column(batch, "payload_bytes", &DataType::Int64, false)?;
        let sizes = sizes.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            rows.push(QuarantinedMessage {
                received_at_us: received.value(i),
                ingest_id: ingest_ids[i].clone(),
                topic: topics[i].clone(),
                reason: reasons[i].clone(),
                detail: details[i].clone(),
                payload: payload.value(i).to_vec(),
                payload_bytes: sizes.value(i),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_come_from_the_topic_and_are_safe_folder_names() {
        assert_eq!(
            partition_of("loopline/v1/plant-1/line_2/d/telemetry"),
            ("plant-1".to_owned(), "line_2".to_owned())
        );
        assert_eq!(
            partition_of("loopline/v1/a b/../d/telemetry"),
            ("a%20b".to_owned(), "%2E.".to_owned())
        );
        assert_eq!(
            partition_of("loopline/v1//x/d/telemetry"),
            (UNKNOWN.to_owned(), "x".to_owned())
        );
        assert_eq!(
            partition_of("elsewhere/topic"),
            (UNKNOWN.to_owned(), UNKNOWN.to_owned())
        );
    }

    #[test]
    fn rows_are_sorted_and_payloads_cut_to_the_limit() {
        let mut buffer = QuarantineBuffer::default();
        for (ts, topic, payload) in [
            (20, "t/b", &b"second"[..]),
            (10, "t/a", &b"first, longer than the limit"[..]),
        ] {
            buffer.push(
                "ingest-1",
                &QuarantineRow {
                    received_at_us: ts,
                    topic,
                    reason: "undecodable",
                    detail: "bad bytes",
                    payload,
                },
                8,
            );
        }
        assert_eq!(buffer.rows(), 2);
        assert_eq!(buffer.ts_range(), (10, 20));
        assert!(buffer.heap_size() > 2 * ROW_BYTES);
        let batch = buffer.to_record_batch().unwrap();
        use arrow_array::cast::AsArray;
        let topics = batch.column(2).as_string::<i32>();
        assert_eq!((topics.value(0), topics.value(1)), ("t/a", "t/b"));
        let payload = batch.column(5).as_binary::<i32>();
        assert_eq!(payload.value(0), b"first, l");
        let sizes = batch
            .column(6)
            .as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!((sizes.value(0), sizes.value(1)), (28, 6));
    }
}
