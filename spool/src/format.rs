//! Byte layout of segment files and of the ack log, and the scanner that recovery runs over a
//! segment. Everything here works on byte slices and `Read`ers, so it is tested without files.
//!
//! Segment file `<first id, 20 digits>.seg`:
//!
//! ```text
//! "LLSPSEG1"                                   8-byte magic
//! record*:
//!   len        u32 LE   payload length
//!   id         u64 LE   record id (the file's first id + the record's index)
//!   header_crc u32 LE   CRC32 of len ‖ id
//!   crc        u32 LE   CRC32 of len ‖ id ‖ payload
//!   payload    len bytes
//! ```
//!
//! The header has its own checksum so that a damaged length can never make the scanner mistake
//! the rest of a segment for a torn tail and cut off the valid records behind it.
//!
//! Ack log `acks.log`: a 20-byte header (`"LLSPACK1"`, `floor` u64 LE, CRC32 of both) followed by
//! 12-byte entries (`id` u64 LE, CRC32 of the id bytes). `floor` is an id no record has been
//! given yet when the log was written, so that ids are never reused after every segment is gone.

use std::io::{self, Read};

/// Magic bytes that open every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"LLSPSEG1";
/// Bytes taken by the segment header.
pub const SEGMENT_HEADER_LEN: u64 = 8;
/// Bytes taken by a record's header, in front of its payload.
pub const RECORD_HEADER_LEN: u64 = 20;

/// Magic bytes that open the ack log.
pub(crate) const ACK_LOG_MAGIC: [u8; 8] = *b"LLSPACK1";
pub(crate) const ACK_LOG_HEADER_LEN: usize = 20;
pub(crate) const ACK_ENTRY_LEN: usize = 12;

/// File name of the segment whose first record id is `first`: zero-padded so that the
/// lexical order of a directory listing is the id order.
pub(crate) fn segment_file_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The first record id of a segment file name, or `None` for anything that is not one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The 20-byte header written in front of `payload`. The caller has checked that the payload
/// length fits in a `u32`.
pub(crate) fn encode_record_header(id: u64, payload: &[u8]) -> [u8; RECORD_HEADER_LEN as usize] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..12].copy_from_slice(&id.to_le_bytes());
    let header_crc = crc32fast::hash(&h[0..12]);
    h[12..16].copy_from_slice(&header_crc.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..12]);
    hasher.update(payload);
    h[16..20].copy_from_slice(&hasher.finalize().to_le_bytes());
    h
}

/// A record header whose own checksum holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) len: u32,
    pub(crate) id: u64,
    pub(crate) crc: u32,
}

/// Decodes a record header; `None` when its checksum does not match.
pub(crate) fn decode_record_header(h: &[u8; RECORD_HEADER_LEN as usize]) -> Option<RecordHeader> {
    let word = |r: std::ops::Range<usize>| -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[r]);
        u32::from_le_bytes(b)
    };
    if crc32fast::hash(&h[0..12]) != word(12..16) {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[4..12]);
    Some(RecordHeader {
        len: word(0..4),
        id: u64::from_le_bytes(id),
        crc: word(16..20),
    })
}

/// Whether `payload` matches the checksum in `header`.
pub(crate) fn payload_matches(header: &RecordHeader, payload: &[u8]) -> bool {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header.len.to_le_bytes());
    hasher.update(&header.id.to_le_bytes());
    hasher.update(payload);
    hasher.finalize() == header.crc
}

/// Where a valid record sits in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScannedRecord {
    /// Offset of the record header in the file.
    pub(crate) offset: u64,
    /// Payload length.
    pub(crate) len: u32,
}

/// How a scan of a segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// The bytes from `at` to the end are an unfinished write: an incomplete record, a damaged
    /// last record, or zeros. Nothing valid follows them.
    Torn { at: u64 },
    /// The bytes at `at` are damaged and more bytes follow: the segment is corrupt.
    Corrupt { at: u64, reason: String },
}

/// What a segment holds: the valid records up to `valid_end`, and how the scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) records: Vec<ScannedRecord>,
    /// End of the last valid record; 0 when even the segment header is missing or torn.
    pub(crate) valid_end: u64,
    pub(crate) end: ScanEnd,
}

/// Reads and checks a whole segment of `file_len` bytes whose name says its first record id is
/// `first_id`. Every record must carry the id that follows its predecessor's.
///
/// A damaged record is a torn tail when nothing but zeros follows it (a crash during the last
/// append, or blocks the file system allocated but never wrote); otherwise it is corruption. A
/// bit flip in the very last record is therefore reported as a torn tail: the two cannot be told
/// apart, and either way that record is gone.
pub(crate) fn scan_segment<R: Read>(mut r: R, file_len: u64, first_id: u64) -> io::Result<Scan> {
    let mut records = Vec::new();
    if file_len < SEGMENT_HEADER_LEN {
        return Ok(Scan {
            records,
            valid_end: 0,
            end: ScanEnd::Torn { at: 0 },
        });
    }
    let mut magic = [0u8; SEGMENT_HEADER_LEN as usize];
    r.read_exact(&mut magic)?;
    if magic != SEGMENT_MAGIC {
        let end = if magic.iter().all(|&b| b == 0)
            && rest_is_zero(&mut r, file_len - SEGMENT_HEADER_LEN)?
        {
            ScanEnd::Torn { at: 0 }
        } else {
            ScanEnd::Corrupt {
                at: 0,
                reason: "bad segment header".to_owned(),
            }
        };
        return Ok(Scan {
            records,
            valid_end: 0,
            end,
        });
    }
    let mut pos = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let remaining = file_len - pos;
        if remaining == 0 {
            return Ok(Scan {
                records,
                valid_end: pos,
                end: ScanEnd::Clean,
            });
        }
        if remaining < RECORD_HEADER_LEN {
            return Ok(Scan {
                records,
                valid_end: pos,
                end: ScanEnd::Torn { at: pos },
            });
        }
        let mut raw = [0u8; RECORD_HEADER_LEN as usize];
        r.read_exact(&mut raw)?;
        let after_header = remaining - RECORD_HEADER_LEN;
        let damaged = |r: &mut R, reason: String, tail: u64| -> io::Result<ScanEnd> {
            Ok(if rest_is_zero(r, tail)? {
                ScanEnd::Torn { at: pos }
            } else {
                ScanEnd::Corrupt { at: pos, reason }
            })
        };
        let Some(header) = decode_record_header(&raw) else {
            let end = damaged(
                &mut r,
                "record header checksum mismatch".to_owned(),
                after_header,
            )?;
            return Ok(Scan {
                records,
                valid_end: pos,
                end,
            });
        };
        let expected = first_id + records.len() as u64;
        if header.id != expected {
            let reason = format!("record id {} where {expected} was expected", header.id);
            return Ok(Scan {
                records,
                valid_end: pos,
                end: ScanEnd::Corrupt { at: pos, reason },
            });
        }
        let len = u64::from(header.len);
        if len > after_header {
            return Ok(Scan {
                records,
                valid_end: pos,
                end: ScanEnd::Torn { at: pos },
            });
        }
        payload.clear();
        payload.resize(header.len as usize, 0);
        r.read_exact(&mut payload)?;
        if !payload_matches(&header, &payload) {
            let reason = format!("payload checksum mismatch in record {}", header.id);
            let end = damaged(&mut r, reason, after_header - len)?;
            return Ok(Scan {
                records,
                valid_end: pos,
                end,
            });
        }
        records.push(ScannedRecord {
            offset: pos,
            len: header.len,
        });
        pos += RECORD_HEADER_LEN + len;
    }
}

/// Whether the next `n` bytes of `r` are all zero.
fn rest_is_zero<R: Read>(r: &mut R, mut n: u64) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let take = n.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..take])?;
        if buf[..take].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        n -= take as u64;
    }
    Ok(true)
}

/// The ack log header carrying `floor`.
pub(crate) fn encode_ack_log_header(floor: u64) -> [u8; ACK_LOG_HEADER_LEN] {
    let mut h = [0u8; ACK_LOG_HEADER_LEN];
    h[0..8].copy_from_slice(&ACK_LOG_MAGIC);
    h[8..16].copy_from_slice(&floor.to_le_bytes());
    let crc = crc32fast::hash(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One ack log entry.
pub(crate) fn encode_ack_entry(id: u64) -> [u8; ACK_ENTRY_LEN] {
    let mut e = [0u8; ACK_ENTRY_LEN];
    e[0..8].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&e[0..8]);
    e[8..12].copy_from_slice(&crc.to_le_bytes());
    e
}

/// What an ack log holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AckLog {
    /// `None` when the header is missing or damaged (then no entry is trusted).
    pub(crate) floor: Option<u64>,
    pub(crate) ids: Vec<u64>,
    /// Bytes after the last valid entry (a torn or damaged tail), ignored.
    pub(crate) discarded_bytes: u64,
}

/// Decodes an ack log, stopping at the first damaged entry: a lost ack only means a resend.
pub(crate) fn decode_ack_log(bytes: &[u8]) -> AckLog {
    let Some(header) = bytes.get(..ACK_LOG_HEADER_LEN) else {
        return AckLog {
            floor: None,
            ids: Vec::new(),
            discarded_bytes: bytes.len() as u64,
        };
    };
    let word32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let word64 = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if header[0..8] != ACK_LOG_MAGIC || crc32fast::hash(&header[0..16]) != word32(&header[16..20]) {
        return AckLog {
            floor: None,
            ids: Vec::new(),
            discarded_bytes: bytes.len() as u64,
        };
    }
    let floor = word64(&header[8..16]);
    let mut ids = Vec::new();
    let mut pos = ACK_LOG_HEADER_LEN;
    while let Some(entry) = bytes.get(pos..pos + ACK_ENTRY_LEN) {
        if crc32fast::hash(&entry[0..8]) != word32(&entry[8..12]) {
            break;
        }
        ids.push(word64(&entry[0..8]));
        pos += ACK_ENTRY_LEN;
    }
    AckLog {
        floor: Some(floor),
        ids,
        discarded_bytes: (bytes.len() - pos) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn segment(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        for (i, p) in payloads.iter().enumerate() {
            out.extend_from_slice(&encode_record_header(first + i as u64, p));
            out.extend_from_slice(p);
        }
        out
    }

    fn scan(bytes: &[u8], first: u64) -> Scan {
        scan_segment(Cursor::new(bytes), bytes.len() as u64, first).unwrap()
    }

    #[test]
    fn file_names_sort_by_id_and_round_trip() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg.tmp"),
            None
        );
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn clean_segment_lists_every_record() {
        let bytes = segment(7, &[b"a", b"", b"hello"]);
        let s = scan(&bytes, 7);
        assert_eq!(s.end, ScanEnd::Clean);
        assert_eq!(s.valid_end, bytes.len() as u64);
        let lens: Vec<u32> = s.records.iter().map(|r| r.len).collect();
        assert_eq!(lens, vec![1, 0, 5]);
        assert_eq!(
            s.records[1].offset,
            SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1
        );
    }

    #[test]
    fn every_cut_inside_the_last_record_is_a_torn_tail() {
        let bytes = segment(0, &[b"first", b"second record"]);
        let second = scan(&bytes, 0).records[1].offset;
        for cut in second + 1..bytes.len() as u64 {
            let s = scan(&bytes[..cut as usize], 0);
            assert_eq!(s.end, ScanEnd::Torn { at: second }, "cut at {cut}");
            assert_eq!(s.records.len(), 1);
            assert_eq!(s.valid_end, second);
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let mut bytes = segment(0, &[b"first"]);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 100]);
        let s = scan(&bytes, 0);
        assert_eq!(s.end, ScanEnd::Torn { at: end });
        assert_eq!(s.records.len(), 1);
    }

    #[test]
    fn a_flipped_byte_in_a_middle_record_is_corruption_wherever_it_lands() {
        let bytes = segment(3, &[b"one", b"two two", b"three"]);
        let s = scan(&bytes, 3);
        let (start, end) = (s.records[1].offset, s.records[2].offset);
        for at in start..end {
            let mut damaged = bytes.clone();
            damaged[at as usize] ^= 0x40;
            let s = scan(&damaged, 3);
            assert!(
                matches!(s.end, ScanEnd::Corrupt { at: a, .. } if a == start),
                "flip at {at}: {:?}",
                s.end
            );
            assert_eq!(s.records.len(), 1, "flip at {at}");
            assert_eq!(s.valid_end, start);
        }
    }

    #[test]
    fn a_record_with_the_wrong_id_is_corruption() {
        let bytes = segment(3, &[b"one", b"two"]);
        let s = scan(&bytes, 4);
        assert_eq!(
            s.end,
            ScanEnd::Corrupt {
                at: 8,
                reason: "record id 3 where 4 was expected".to_owned()
            }
        );
        assert!(s.records.is_empty());
    }

    #[test]
    fn missing_or_zero_header_is_torn_and_a_wrong_one_corrupt() {
        assert_eq!(scan(b"LLSP", 0).end, ScanEnd::Torn { at: 0 });
        assert_eq!(scan(&[0u8; 40], 0).end, ScanEnd::Torn { at: 0 });
        let s = scan(b"NOTASPOOLFILE", 0);
        assert!(matches!(s.end, ScanEnd::Corrupt { at: 0, .. }));
        assert_eq!(s.valid_end, 0);
    }

    #[test]
    fn ack_log_round_trips_and_stops_at_a_damaged_entry() {
        let mut bytes = encode_ack_log_header(99).to_vec();
        for id in [5u64, 3, 8] {
            bytes.extend_from_slice(&encode_ack_entry(id));
        }
        let log = decode_ack_log(&bytes);
        assert_eq!(
            log,
            AckLog {
                floor: Some(99),
                ids: vec![5, 3, 8],
                discarded_bytes: 0
            }
        );

        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 5);
        assert_eq!(decode_ack_log(&torn).ids, vec![5, 3]);
        assert_eq!(decode_ack_log(&torn).discarded_bytes, 7);

        let mut flipped = bytes.clone();
        flipped[ACK_LOG_HEADER_LEN + ACK_ENTRY_LEN + 2] ^= 1;
        assert_eq!(decode_ack_log(&flipped).ids, vec![5]);

        let mut bad_header = bytes;
        bad_header[9] ^= 1;
        assert_eq!(decode_ack_log(&bad_header).floor, None);
        assert!(decode_ack_log(&bad_header).ids.is_empty());
    }
}
