//! The spool: telemetry batches on disk from the moment they are made until the broker has
//! acknowledged them.
//!
//! # Design
//!
//! The spool is a directory of append-only segment files, `<first record id>.seg` (20 digits,
//! so a listing sorts by id), plus an ack log `acks.log` and, when needed, `quarantine/`. The
//! byte layout is in [`crate::format`].
//!
//! Invariants this module keeps:
//!
//! 1. **Nothing unacknowledged is deleted**, except by `WhenFull::DropOldest`, which reports
//!    every record id it deleted. A segment file is deleted once every record in it is
//!    acknowledged, and never while it is the segment being appended to.
//! 2. **Ids are never reused.** Record ids grow by one per append. Within a segment they are
//!    consecutive from the id in its name, and the scanner checks that. After a restart ids
//!    continue after the highest id seen in any segment, quarantined ones included, and after
//!    the ack log's `floor` and its highest acked id, so a stale ack can never match a new
//!    record.
//! 3. **Everything `append` returned is in the page cache** (one `write` per record, no
//!    user-space buffer), so a killed process loses nothing. How much a power cut can lose is
//!    the [`FsyncPolicy`]: nothing (`Always`), the last interval (`Interval`), or whatever the
//!    OS had not written back (`Never`). Closing a segment (roll) fsyncs it, and creating one
//!    fsyncs the directory, unless the policy is `Never` (then `sync` and `close` catch up on
//!    both). A closed segment whose records are all acknowledged is deleted instead of synced.
//! 4. **Every record is checksummed** (CRC32 over length, id and payload, and a second one over
//!    the header alone). Recovery on open checks every byte: an unfinished last record (a torn
//!    tail) is cut off and counted; a damaged record with valid data after it means the segment
//!    is corrupt, so the file is moved to `quarantine/` for an operator to inspect, and the
//!    valid records in front of the damage are kept in a rewritten segment of the same name.
//!    Recovery never panics and never refuses to start because of what a file contains.
//! 5. **Acks are at-least-once safe.** They go to an append-only log that is synced with the
//!    data; a lost ack only makes a record be sent again, which ingest de-duplicates on
//!    `(device, boot_id, seq)`. Acks may come in any order; unknown and duplicate ones are
//!    counted and otherwise ignored.
//!
//! Replay: `next_unsent` hands out unacknowledged records oldest first, each once, until
//! `rewind` (after a reconnect) makes every unacknowledged record unsent again. A fresh `open`
//! starts with everything unsent.
//!
//! This is the design of Vector's disk buffer (`disk_v2`: checksummed records, sync on roll,
//! delete only what is acknowledged), and the opposite of a spool that never syncs and deletes
//! a file as soon as it has been read back.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::{FsyncPolicy, SpoolConfig, WhenFull};
use crate::error::{Error, Result, Unwritten};
use crate::format::{self, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, ScanEnd};
use crate::ledger::{self, Ledger};
use crate::sync_dir;

/// Name of the folder, inside the spool directory, where corrupt segments are moved.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Suffix of files that are written and then renamed into place; leftovers are deleted on open.
const TMP_SUFFIX: &str = ".tmp";

/// The ack log is rewritten once it holds at least this many entries and more than twice as
/// many as there are acked records still on disk.
const LEDGER_COMPACT_MIN_ENTRIES: u64 = 4096;

/// Under `FsyncPolicy::Always`, how often `maybe_sync` syncs the ack log.
const ALWAYS_ACK_SYNC_EVERY: Duration = Duration::from_secs(1);

/// A record's position in the order of appends. Ids grow by one per append and are never
/// reused in a spool directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A record handed out for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    pub payload: Vec<u8>,
}

/// Unacknowledged records deleted by `WhenFull::DropOldest` to make room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// How many records.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Their ids, as ascending runs of consecutive ids.
    pub ids: Vec<RangeInclusive<RecordId>>,
}

impl Dropped {
    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Every dropped id, ascending.
    pub fn iter_ids(&self) -> impl Iterator<Item = RecordId> + '_ {
        self.ids
            .iter()
            .flat_map(|r| (r.start().0..=r.end().0).map(RecordId))
    }

    fn push(&mut self, id: u64, bytes: u64) {
        self.records += 1;
        self.bytes += bytes;
        match self.ids.last_mut() {
            Some(run) if run.end().0 + 1 == id => *run = *run.start()..=RecordId(id),
            _ => self.ids.push(RecordId(id)..=RecordId(id)),
        }
    }

    fn merge(&mut self, other: Dropped) {
        for id in other.iter_ids() {
            self.push(id.0, 0);
        }
        self.bytes += other.bytes;
    }
}

/// What `append` did with a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The record is in the spool under `id`. `dropped` lists what `WhenFull::DropOldest`
    /// deleted to make room (empty otherwise).
    Stored { id: RecordId, dropped: Dropped },
    /// The spool is at its cap and the policy is `WhenFull::Block`: nothing was written and the
    /// payload comes back. Retry once acks have freed a segment.
    Full { payload: Vec<u8> },
}

/// A segment moved to quarantine during recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the segment was in the spool.
    pub segment: PathBuf,
    /// Where the untouched original now is.
    pub moved_to: PathBuf,
    /// Byte offset of the damage.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// Valid records in front of the damage, kept in the spool.
    pub salvaged_records: u64,
}

/// What `open` found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files in the spool after recovery (including a newly created one to append to).
    pub segments: u64,
    /// Valid records found, acknowledged or not.
    pub records: u64,
    /// Of those, not yet acknowledged: they will be sent again.
    pub pending_records: u64,
    /// Payload bytes of the pending records.
    pub pending_bytes: u64,
    /// The id the next append gets.
    pub next_id: RecordId,
    /// Segments whose end was an unfinished write, cut off.
    pub torn_tails: u64,
    /// Bytes cut off with them.
    pub torn_bytes: u64,
    /// Corrupt segments moved to `quarantine/`.
    pub quarantined: Vec<Quarantined>,
    /// Leftover temporary files deleted.
    pub removed_temp_files: u64,
    /// Bytes of the ack log that could not be read (a torn or damaged tail); the acks in them
    /// are lost, so those records are sent again.
    pub ack_log_discarded_bytes: u64,
}

/// Counters and gauges of a spool, for health reports and metrics. Counters count since `open`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records not yet acknowledged.
    pub pending_records: u64,
    /// Their payload bytes.
    pub pending_bytes: u64,
    /// Pending records not handed out by `next_unsent` since the last `rewind` or `open`.
    pub unsent_records: u64,
    /// Records appended since the last sync: what a power cut could take.
    pub unsynced_records: u64,
    /// Records appended.
    pub appended_records: u64,
    /// Payload bytes appended.
    pub appended_bytes: u64,
    /// Records acknowledged.
    pub acked_records: u64,
    /// Appends refused by `WhenFull::Block`.
    pub full_refusals: u64,
    /// Unacknowledged records deleted by `WhenFull::DropOldest`.
    pub dropped_records: u64,
    /// Their payload bytes.
    pub dropped_bytes: u64,
    /// Segments moved to quarantine (at open).
    pub quarantined_segments: u64,
    /// Torn tails cut off (at open).
    pub torn_tails: u64,
    /// Records that failed their checksum when read back for sending; they cannot be sent and
    /// are no longer pending.
    pub corrupt_records: u64,
    /// Segment files in the spool.
    pub segments: u64,
    /// Bytes of those files: what `max_bytes` caps.
    pub disk_bytes: u64,
    /// Acks for records already acknowledged.
    pub duplicate_acks: u64,
    /// Acks for ids the spool does not hold: never assigned, or already deleted (acknowledged
    /// earlier, dropped, or quarantined).
    pub unknown_acks: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: u64,
    len: u32,
    /// Acknowledged, or found corrupt when read back: not pending any more.
    done: bool,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    /// Bytes of the file.
    len: u64,
    slots: Vec<Slot>,
    /// Slots not done.
    open_slots: usize,
    /// A record failed its checksum when read back: quarantine the file instead of deleting it.
    damaged: bool,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first + self.slots.len() as u64
    }
}

/// Recently appended payloads, oldest first, bounded in bytes.
#[derive(Debug, Default)]
struct Cache {
    entries: VecDeque<(u64, Vec<u8>)>,
    bytes: u64,
    limit: u64,
}

impl Cache {
    fn push(&mut self, id: u64, payload: Vec<u8>) {
        let len = payload.len() as u64;
        if len > self.limit {
            return;
        }
        self.entries.push_back((id, payload));
        self.bytes += len;
        while self.bytes > self.limit {
            let Some((_, old)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.len() as u64;
        }
    }

    /// The payload of `id`, removed from the cache. Entries older than `id` are given up:
    /// records are handed out in id order, so they are not asked for again before a rewind.
    fn take(&mut self, id: u64) -> Option<Vec<u8>> {
        while let Some((front, _)) = self.entries.front() {
            if *front > id {
                return None;
            }
            let (front, payload) = self.entries.pop_front()?;
            self.bytes -= payload.len() as u64;
            if front == id {
                return Some(payload);
            }
        }
        None
    }
}

/// The durable spool. Single-threaded: one task owns it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    /// Live segments in id order; the last one is the one appended to when `writer` is set.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    ledger: Ledger,
    next_id: u64,
    /// Records with ids below this have been handed out since the last rewind.
    cursor: u64,
    cache: Cache,
    /// Open read handle and the first id of its segment.
    reader: Option<(u64, File)>,
    /// Reused buffer for one framed record, so that a record takes one `write` call.
    frame: Vec<u8>,
    last_sync: Option<Instant>,
    disk_bytes: u64,
    stats: SpoolStats,
    ledger_compact_min: u64,
    /// Under `FsyncPolicy::Never`, segments closed without a sync and whether the directory
    /// holds entries not yet synced, so that `sync` and `close` can still make everything
    /// durable.
    unsynced_sealed: Vec<(PathBuf, File)>,
    dir_dirty: bool,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering what a crash left behind.
    ///
    /// Damaged data is cut off or quarantined and reported in [`Recovery`]; only file system
    /// errors (permissions, a full disk) make this fail.
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<(Spool, Recovery)> {
        config.validate()?;
        fs::create_dir_all(dir).map_err(|e| Error::io("create spool directory", dir, e))?;
        let mut recovery = Recovery::default();

        let mut found = Vec::new();
        let listing = fs::read_dir(dir).map_err(|e| Error::io("list spool directory", dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| Error::io("list spool directory", dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file {
                continue;
            }
            if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path)
                    .map_err(|e| Error::io("remove leftover temporary file", &path, e))?;
                recovery.removed_temp_files += 1;
            } else if let Some(first) = format::parse_segment_file_name(&name) {
                found.push((first, path));
            }
        }
        found.sort();

        let acks = ledger::load(dir)?;
        recovery.ack_log_discarded_bytes = acks.discarded_bytes;
        if acks.discarded_bytes > 0 {
            warn!(dir = %dir.display(), bytes = acks.discarded_bytes, "ack log had an unreadable tail; those records will be sent again");
        }
        let mut next_id = acks.floor.unwrap_or(0);
        if let Some(max) = acks.ids.iter().max() {
            next_id = next_id.max(max.saturating_add(1));
        }

        let mut segments: VecDeque<Segment> = VecDeque::new();
        // Whether the last segment can take further appends: intact (or only torn) and not
        // followed by anything.
        let mut last_appendable = false;
        let count = found.len();
        for (i, (first, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            last_appendable = false;
            let file = File::open(&path).map_err(|e| Error::io("open segment", &path, e))?;
            let file_len = file
                .metadata()
                .map_err(|e| Error::io("stat segment", &path, e))?
                .len();
            // Ids in this file are below `first + file_len / RECORD_HEADER_LEN`, since every
            // record takes at least a header: a bound that holds whatever the file contains.
            let id_bound = first.saturating_add(file_len / RECORD_HEADER_LEN + 1);
            let overlaps = segments.back().is_some_and(|prev| first < prev.end());
            let scan = if overlaps {
                format::Scan {
                    records: Vec::new(),
                    valid_end: 0,
                    end: ScanEnd::Corrupt {
                        at: 0,
                        reason: "its ids overlap the previous segment's".to_owned(),
                    },
                }
            } else {
                format::scan_segment(BufReader::with_capacity(1 << 16, &file), file_len, first)
                    .map_err(|e| Error::io("read segment", &path, e))?
            };
            drop(file);
            let slots: Vec<Slot> = scan
                .records
                .iter()
                .map(|r| Slot {
                    offset: r.offset,
                    len: r.len,
                    done: false,
                })
                .collect();
            let mut len = scan.valid_end;
            match scan.end {
                ScanEnd::Clean => last_appendable = is_last,
                ScanEnd::Torn { at } => {
                    recovery.torn_tails += 1;
                    recovery.torn_bytes += file_len - at;
                    warn!(segment = %path.display(), offset = at, bytes = file_len - at, "cutting off a torn tail (an append that never completed)");
                    if scan.valid_end < SEGMENT_HEADER_LEN {
                        if !is_last {
                            fs::remove_file(&path)
                                .map_err(|e| Error::io("remove empty segment", &path, e))?;
                            next_id = next_id.max(first);
                            continue;
                        }
                        write_segment_header(&path)?;
                        len = SEGMENT_HEADER_LEN;
                    } else {
                        truncate(&path, scan.valid_end)?;
                    }
                    last_appendable = is_last;
                }
                ScanEnd::Corrupt { at, reason } => {
                    next_id = next_id.max(id_bound);
                    let moved_to = quarantine(dir, &path, scan.valid_end, !slots.is_empty())?;
                    error!(
                        segment = %path.display(), moved_to = %moved_to.display(), offset = at, %reason,
                        salvaged_records = slots.len(),
                        "corrupt spool segment moved to quarantine; records after the damage are lost"
                    );
                    recovery.quarantined.push(Quarantined {
                        segment: path.clone(),
                        moved_to,
                        offset: at,
                        reason,
                        salvaged_records: slots.len() as u64,
                    });
                    if slots.is_empty() {
                        continue;
                    }
                }
            }
            let open_slots = slots.len();
            let segment = Segment {
                first,
                path,
                len,
                slots,
                open_slots,
                damaged: false,
            };
            next_id = next_id.max(segment.end());
            segments.push_back(segment);
        }

        let acked: HashSet<u64> = acks.ids.into_iter().collect();
        for seg in segments.iter_mut() {
            for (i, slot) in seg.slots.iter_mut().enumerate() {
                if acked.contains(&(seg.first + i as u64)) {
                    slot.done = true;
                    seg.open_slots -= 1;
                }
            }
        }

        // Append to the last segment only if its next id is the spool's next id (a crash can
        // leave acks for records whose data never reached the disk).
        let continue_last = last_appendable && segments.back().is_some_and(|s| s.end() == next_id);
        let keep_last = usize::from(continue_last);
        let mut kept = VecDeque::with_capacity(segments.len());
        let total = segments.len();
        for (i, seg) in segments.into_iter().enumerate() {
            if seg.open_slots == 0 && i + keep_last < total {
                fs::remove_file(&seg.path)
                    .map_err(|e| Error::io("remove acknowledged segment", &seg.path, e))?;
                debug!(segment = %seg.path.display(), "removed fully acknowledged segment");
            } else {
                kept.push_back(seg);
            }
        }

        let ledger = Ledger::rewrite(dir, next_id, done_ids(&kept))?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            cache: Cache {
                limit: config.cache_bytes,
                ..Cache::default()
            },
            config,
            disk_bytes: kept.iter().map(|s| s.len).sum(),
            segments: kept,
            writer: None,
            ledger,
            next_id,
            cursor: 0,
            reader: None,
            frame: Vec::new(),
            last_sync: None,
            stats: SpoolStats::default(),
            ledger_compact_min: LEDGER_COMPACT_MIN_ENTRIES,
            unsynced_sealed: Vec::new(),
            dir_dirty: false,
        };
        if continue_last {
            if let Some(last) = spool.segments.back() {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(|e| Error::io("open segment for appending", &last.path, e))?;
                spool.writer = Some(file);
            }
        } else {
            spool.create_segment()?;
        }

        for seg in &spool.segments {
            recovery.records += seg.slots.len() as u64;
            for slot in seg.slots.iter().filter(|s| !s.done) {
                spool.stats.pending_records += 1;
                spool.stats.pending_bytes += u64::from(slot.len);
            }
        }
        spool.stats.unsent_records = spool.stats.pending_records;
        spool.stats.torn_tails = recovery.torn_tails;
        spool.stats.quarantined_segments = recovery.quarantined.len() as u64;
        recovery.segments = spool.segments.len() as u64;
        recovery.pending_records = spool.stats.pending_records;
        recovery.pending_bytes = spool.stats.pending_bytes;
        recovery.next_id = RecordId(next_id);
        info!(
            dir = %dir.display(), segments = recovery.segments, pending_records = recovery.pending_records,
            pending_bytes = recovery.pending_bytes, next_id, torn_tails = recovery.torn_tails,
            quarantined = recovery.quarantined.len(), "spool opened"
        );
        Ok((spool, recovery))
    }

    /// Stores `payload` and gives it the next id. The record is in the page cache when this
    /// returns (and on the disk too under `FsyncPolicy::Always`).
    ///
    /// At the cap, `WhenFull::Block` hands the payload back in `Appended::Full`, and
    /// `WhenFull::DropOldest` deletes the oldest segments and lists what they held. A payload
    /// that could never fit is `Error::TooLarge`; a failed write is `Error::Append`; both hand
    /// the payload back.
    pub fn append(&mut self, payload: Vec<u8>) -> Result<Appended> {
        let len = payload.len() as u64;
        let frame_len = RECORD_HEADER_LEN + len;
        if u32::try_from(len).is_err() || SEGMENT_HEADER_LEN + frame_len > self.config.max_bytes {
            return Err(Error::TooLarge {
                len,
                framed: SEGMENT_HEADER_LEN + frame_len,
                max_bytes: self.config.max_bytes,
                payload: Unwritten(payload),
            });
        }
        let dropped = match self.make_room(frame_len) {
            Ok(Some(dropped)) => dropped,
            Ok(None) => {
                self.stats.full_refusals += 1;
                return Ok(Appended::Full { payload });
            }
            Err(e) => return Err(e.give_back(payload)),
        };
        let id = self.next_id;
        self.frame.clear();
        self.frame
            .extend_from_slice(&format::encode_record_header(id, &payload));
        self.frame.extend_from_slice(&payload);
        let (Some(writer), Some(active)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            let source = ErrorKind::NotFound.into();
            return Err(Error::io("append to spool", &self.dir, source).give_back(payload));
        };
        let offset = active.len;
        if let Err(source) = writer.write_all(&self.frame) {
            // Cut off whatever part was written and append nothing more to this segment, so a
            // partial record can only ever sit at a segment's end (where recovery expects it).
            if let Err(e) = writer.set_len(offset) {
                warn!(segment = %active.path.display(), error = %e, "could not cut off a failed append; recovery will");
            }
            let path = active.path.clone();
            self.writer = None;
            if let Err(e) = self.retire_back_if_done() {
                warn!(error = %e, "could not remove an empty segment after a failed append");
            }
            let action = "append to segment";
            return Err(Error::Append {
                action,
                path,
                source,
                payload: Unwritten(payload),
            });
        }
        if self.frame.capacity() > (1 << 20) {
            self.frame = Vec::new();
        }
        active.slots.push(Slot {
            offset,
            len: len as u32,
            done: false,
        });
        active.open_slots += 1;
        active.len += frame_len;
        self.disk_bytes += frame_len;
        self.next_id += 1;
        self.stats.pending_records += 1;
        self.stats.pending_bytes += len;
        self.stats.unsent_records += 1;
        self.stats.appended_records += 1;
        self.stats.appended_bytes += len;
        self.stats.unsynced_records += 1;
        self.cache.push(id, payload);
        if self.config.fsync == FsyncPolicy::Always {
            writer.sync_data().map_err(|source| Error::Unsynced {
                id: RecordId(id),
                path: active.path.clone(),
                source,
            })?;
            self.stats.unsynced_records = 0;
        }
        Ok(Appended::Stored {
            id: RecordId(id),
            dropped,
        })
    }

    /// The oldest pending record not handed out since the last `rewind` (or `open`), or `None`
    /// when every pending record is out.
    pub fn next_unsent(&mut self) -> Result<Option<Record>> {
        loop {
            let Some((si, ri)) = self.find_unsent() else {
                return Ok(None);
            };
            let id = self.segments[si].first + ri as u64;
            self.cursor = id + 1;
            self.stats.unsent_records = self.stats.unsent_records.saturating_sub(1);
            if let Some(payload) = self.cache.take(id) {
                return Ok(Some(Record {
                    id: RecordId(id),
                    payload,
                }));
            }
            match self.read_slot(si, ri)? {
                Some(payload) => {
                    return Ok(Some(Record {
                        id: RecordId(id),
                        payload,
                    }));
                }
                None => {
                    let seg = &mut self.segments[si];
                    error!(segment = %seg.path.display(), record = id, "record failed its checksum when read back; it is lost");
                    seg.damaged = true;
                    self.stats.corrupt_records += 1;
                    self.finish_slot(si, ri)?;
                }
            }
        }
    }

    /// Makes every pending record unsent again, oldest first: after a reconnect, whatever was
    /// in flight must be sent again.
    pub fn rewind(&mut self) {
        self.cursor = 0;
        self.stats.unsent_records = self.stats.pending_records;
    }

    /// Records that the broker acknowledged `id`. Deletes the segment once all its records are
    /// acknowledged. Acks in any order are fine; an ack for an id the spool does not hold, or
    /// holds as already acknowledged, is counted and ignored.
    pub fn ack(&mut self, id: RecordId) -> Result<()> {
        let Some((si, ri)) = self.locate(id.0) else {
            self.stats.unknown_acks += 1;
            debug!(record = id.0, "ack for a record the spool does not hold");
            return Ok(());
        };
        if self.segments[si].slots[ri].done {
            self.stats.duplicate_acks += 1;
            debug!(record = id.0, "duplicate ack");
            return Ok(());
        }
        self.ledger.append(id.0)?;
        self.stats.acked_records += 1;
        self.finish_slot(si, ri)?;
        self.maybe_compact_ledger()
    }

    /// Forces appended records and acks to the disk now.
    pub fn sync(&mut self) -> Result<()> {
        if let (Some(writer), Some(active)) = (&self.writer, self.segments.back())
            && self.stats.unsynced_records > 0
        {
            writer
                .sync_data()
                .map_err(|e| Error::io("fdatasync segment", &active.path, e))?;
        }
        for (path, file) in self.unsynced_sealed.drain(..) {
            file.sync_data()
                .map_err(|e| Error::io("fdatasync segment", &path, e))?;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.stats.unsynced_records = 0;
        self.ledger.sync()
    }

    /// Syncs if the policy calls for it at `now`: under `Interval(d)`, when there is something
    /// to sync and `d` has passed since the last sync made here; under `Always`, the ack log at
    /// most once a second (records are already synced); never under `Never`.
    pub fn maybe_sync(&mut self, now: Instant) -> Result<()> {
        match self.config.fsync {
            FsyncPolicy::Never => Ok(()),
            FsyncPolicy::Always => {
                // Records are synced by `append`; acks only need to be durable enough to spare
                // resends, so they are synced at most once per ALWAYS_ACK_SYNC_EVERY.
                let due = self.last_sync.is_none_or(|last| {
                    now.saturating_duration_since(last) >= ALWAYS_ACK_SYNC_EVERY
                });
                if self.ledger.dirty && due {
                    self.ledger.sync()?;
                    self.last_sync = Some(now);
                }
                Ok(())
            }
            FsyncPolicy::Interval(every) => {
                let dirty = self.stats.unsynced_records > 0 || self.ledger.dirty;
                let due = self
                    .last_sync
                    .is_none_or(|last| now.saturating_duration_since(last) >= every);
                if dirty && due {
                    self.sync()?;
                    self.last_sync = Some(now);
                }
                Ok(())
            }
        }
    }

    /// Gauges and counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            segments: self.segments.len() as u64,
            disk_bytes: self.disk_bytes,
            ..self.stats.clone()
        }
    }

    /// Ids of the pending records, oldest first, without changing what is unsent.
    pub fn pending_ids(&self) -> impl Iterator<Item = RecordId> + '_ {
        self.segments.iter().flat_map(|s| {
            s.slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| !slot.done)
                .map(|(i, _)| RecordId(s.first + i as u64))
        })
    }

    /// The configuration the spool runs with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs the records and the acks to the disk, whatever the policy, and closes the files.
    pub fn close(mut self) -> Result<()> {
        self.sync()?;
        info!(dir = %self.dir.display(), pending_records = self.stats.pending_records, "spool closed");
        Ok(())
    }

    /// Closes the active segment if the next record would take it past `segment_bytes`, makes
    /// room under the cap (`None`: full and the policy is `Block`), and opens a segment to append
    /// to. Nothing here has touched the payload, so a failure hands it back.
    fn make_room(&mut self, frame_len: u64) -> Result<Option<Dropped>> {
        if let Some(active) = self.active()
            && !active.slots.is_empty()
            && active.len + frame_len > self.config.segment_bytes
        {
            self.seal_active()?;
        }
        if self.projected(frame_len) > self.config.max_bytes
            && self
                .active()
                .is_some_and(|a| a.open_slots == 0 && !a.slots.is_empty())
        {
            // Every record in the active segment is acknowledged: close it so it can go.
            self.seal_active()?;
        }
        let mut dropped = Dropped::default();
        while self.projected(frame_len) > self.config.max_bytes && !self.segments.is_empty() {
            match self.config.when_full {
                WhenFull::Block => return Ok(None),
                WhenFull::DropOldest => dropped.merge(self.drop_oldest_segment()?),
            }
        }
        if !dropped.is_empty() {
            error!(
                dir = %self.dir.display(), records = dropped.records, bytes = dropped.bytes,
                first = %dropped.ids.first().map_or(RecordId(0), |r| *r.start()),
                last = %dropped.ids.last().map_or(RecordId(0), |r| *r.end()),
                "spool full: dropped the oldest unacknowledged records"
            );
        }
        if self.writer.is_none() {
            self.create_segment()?;
        }
        Ok(Some(dropped))
    }

    fn active(&self) -> Option<&Segment> {
        self.writer.as_ref().and(self.segments.back())
    }

    /// Disk bytes after appending a frame of `frame_len`, counting a new segment's header when
    /// there is no segment to append to.
    fn projected(&self, frame_len: u64) -> u64 {
        let header = if self.writer.is_none() {
            SEGMENT_HEADER_LEN
        } else {
            0
        };
        self.disk_bytes + frame_len + header
    }

    /// Finishes the active segment: fsync what is not yet synced (unless `Never`), stop
    /// appending, and delete it if every record in it is acknowledged.
    fn seal_active(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            if let Some(active) = self.segments.back() {
                // A segment whose records are all acknowledged is deleted right below: syncing
                // it would only cost time.
                let needs_sync = self.stats.unsynced_records > 0 && active.open_slots > 0;
                if self.config.fsync == FsyncPolicy::Never {
                    self.unsynced_sealed.push((active.path.clone(), writer));
                } else if needs_sync {
                    writer
                        .sync_data()
                        .map_err(|e| Error::io("fdatasync segment", &active.path, e))?;
                }
                if self.config.fsync != FsyncPolicy::Never {
                    self.stats.unsynced_records = 0;
                }
            }
            self.retire_back_if_done()?;
        }
        Ok(())
    }

    fn retire_back_if_done(&mut self) -> Result<()> {
        if self.writer.is_none() && self.segments.back().is_some_and(|s| s.open_slots == 0) {
            self.retire(self.segments.len() - 1)?;
        }
        Ok(())
    }

    /// Starts a new segment named after the next id.
    fn create_segment(&mut self) -> Result<()> {
        let path = self.dir.join(format::segment_file_name(self.next_id));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("create segment", &path, e))?;
        file.write_all(&format::SEGMENT_MAGIC)
            .map_err(|e| Error::io("write segment header", &path, e))?;
        // The directory entry is synced now; the header reaches the disk with the first
        // record's sync (a header lost before that is a torn tail, rewritten on open).
        if self.config.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        } else {
            self.dir_dirty = true;
        }
        self.segments.push_back(Segment {
            first: self.next_id,
            path,
            len: SEGMENT_HEADER_LEN,
            slots: Vec::new(),
            open_slots: 0,
            damaged: false,
        });
        self.disk_bytes += SEGMENT_HEADER_LEN;
        self.writer = Some(file);
        Ok(())
    }

    /// Deletes the oldest segment, pending records and all (`WhenFull::DropOldest`).
    fn drop_oldest_segment(&mut self) -> Result<Dropped> {
        let mut dropped = Dropped::default();
        let Some(oldest) = self.segments.front() else {
            return Ok(dropped);
        };
        for (i, slot) in oldest.slots.iter().enumerate().filter(|(_, s)| !s.done) {
            dropped.push(oldest.first + i as u64, u64::from(slot.len));
        }
        if self.segments.len() == 1 {
            self.writer = None;
        }
        self.retire(0)?;
        let unsent = dropped.iter_ids().filter(|id| id.0 >= self.cursor).count() as u64;
        self.stats.unsent_records = self.stats.unsent_records.saturating_sub(unsent);
        self.stats.pending_records -= dropped.records;
        self.stats.pending_bytes -= dropped.bytes;
        self.stats.dropped_records += dropped.records;
        self.stats.dropped_bytes += dropped.bytes;
        Ok(dropped)
    }

    /// Deletes segment `si` (or quarantines it if a record in it was found damaged).
    fn retire(&mut self, si: usize) -> Result<()> {
        let Some(seg) = self.segments.get(si) else {
            return Ok(());
        };
        if seg.damaged {
            let moved_to = quarantine(&self.dir, &seg.path, 0, false)?;
            self.stats.quarantined_segments += 1;
            warn!(segment = %seg.path.display(), moved_to = %moved_to.display(), "segment with a damaged record moved to quarantine");
        } else {
            fs::remove_file(&seg.path).map_err(|e| Error::io("remove segment", &seg.path, e))?;
        }
        if self
            .reader
            .as_ref()
            .is_some_and(|(first, _)| *first == seg.first)
        {
            self.reader = None;
        }
        if let Some(seg) = self.segments.remove(si) {
            // A deleted segment needs no sync.
            self.unsynced_sealed.retain(|(path, _)| *path != seg.path);
            self.disk_bytes -= seg.len;
            debug!(segment = %seg.path.display(), "segment removed");
        }
        Ok(())
    }

    /// Marks a pending record as no longer pending, and retires its segment if that was the
    /// last one and the segment is not being appended to.
    fn finish_slot(&mut self, si: usize, ri: usize) -> Result<()> {
        let is_active = self.writer.is_some() && si + 1 == self.segments.len();
        let seg = &mut self.segments[si];
        let slot = &mut seg.slots[ri];
        slot.done = true;
        seg.open_slots -= 1;
        self.stats.pending_records -= 1;
        self.stats.pending_bytes -= u64::from(slot.len);
        if seg.first + ri as u64 >= self.cursor {
            self.stats.unsent_records = self.stats.unsent_records.saturating_sub(1);
        }
        if seg.open_slots == 0 && !is_active {
            self.retire(si)?;
        }
        Ok(())
    }

    /// Segment and slot index of `id`, if a live segment holds it.
    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        let si = self.segments.partition_point(|s| s.end() <= id);
        let seg = self.segments.get(si)?;
        let ri = usize::try_from(id.checked_sub(seg.first)?).ok()?;
        (ri < seg.slots.len()).then_some((si, ri))
    }

    fn find_unsent(&self) -> Option<(usize, usize)> {
        let start = self.segments.partition_point(|s| s.end() <= self.cursor);
        for (si, seg) in self.segments.iter().enumerate().skip(start) {
            let from = usize::try_from(self.cursor.saturating_sub(seg.first)).unwrap_or(usize::MAX);
            if let Some(ri) = seg.slots.iter().skip(from).position(|s| !s.done) {
                return Some((si, from + ri));
            }
        }
        None
    }

    /// Reads a record back from its segment; `None` when it no longer matches its checksum.
    fn read_slot(&mut self, si: usize, ri: usize) -> Result<Option<Vec<u8>>> {
        let seg = &self.segments[si];
        let slot = seg.slots[ri];
        let id = seg.first + ri as u64;
        let path = &seg.path;
        let file = match &mut self.reader {
            Some((first, file)) if *first == seg.first => file,
            reader => {
                let file =
                    File::open(path).map_err(|e| Error::io("open segment for reading", path, e))?;
                &mut reader.insert((seg.first, file)).1
            }
        };
        file.seek(SeekFrom::Start(slot.offset))
            .map_err(|e| Error::io("seek in segment", path, e))?;
        let mut raw = [0u8; RECORD_HEADER_LEN as usize];
        let mut payload = vec![0u8; slot.len as usize];
        let read = file
            .read_exact(&mut raw)
            .and_then(|()| file.read_exact(&mut payload));
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io("read segment", path, e)),
        }
        let intact = format::decode_record_header(&raw).is_some_and(|h| {
            h.id == id && h.len == slot.len && format::payload_matches(&h, &payload)
        });
        Ok(intact.then_some(payload))
    }

    fn maybe_compact_ledger(&mut self) -> Result<()> {
        if self.ledger.entries < self.ledger_compact_min {
            return Ok(());
        }
        let live: u64 = self
            .segments
            .iter()
            .map(|s| (s.slots.len() - s.open_slots) as u64)
            .sum();
        if self.ledger.entries > 2 * live {
            self.ledger = Ledger::rewrite(&self.dir, self.next_id, done_ids(&self.segments))?;
            debug!(dir = %self.dir.display(), entries = live, "ack log compacted");
        }
        Ok(())
    }
}

/// Ids of the records in `segments` that are no longer pending.
fn done_ids(segments: &VecDeque<Segment>) -> impl Iterator<Item = u64> + '_ {
    segments.iter().flat_map(|s| {
        s.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.done)
            .map(|(i, _)| s.first + i as u64)
    })
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open segment", path, e))?;
    file.set_len(len)
        .map_err(|e| Error::io("truncate torn tail of segment", path, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync segment", path, e))
}

/// Rewrites a segment whose header never reached the disk as an empty segment.
fn write_segment_header(path: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io("open segment", path, e))?;
    file.write_all(&format::SEGMENT_MAGIC)
        .map_err(|e| Error::io("write segment header", path, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync segment", path, e))
}

/// Moves `path` into `<dir>/quarantine/` untouched and returns where it went. With `salvage`,
/// the first `valid_end` bytes (a header and whole valid records) are first copied to a
/// temporary file that then replaces `path`; the original is linked (or copied) into quarantine
/// before that rename, so a crash at any point leaves either the original or both.
fn quarantine(dir: &Path, path: &Path, valid_end: u64, salvage: bool) -> Result<PathBuf> {
    let qdir = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&qdir).map_err(|e| Error::io("create quarantine directory", &qdir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = qdir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = qdir.join(format!("{name}.{n}"));
        n += 1;
    }
    if salvage {
        let tmp = path.with_file_name(format!("{name}{TMP_SUFFIX}"));
        let mut src = File::open(path).map_err(|e| Error::io("open segment", path, e))?;
        let mut out = File::create(&tmp).map_err(|e| Error::io("create salvage file", &tmp, e))?;
        std::io::copy(&mut (&mut src).take(valid_end), &mut out)
            .map_err(|e| Error::io("copy valid records to salvage file", &tmp, e))?;
        out.sync_all()
            .map_err(|e| Error::io("fsync salvage file", &tmp, e))?;
        if fs::hard_link(path, &target).is_err() {
            fs::copy(path, &target)
                .map_err(|e| Error::io("copy segment into quarantine", &target, e))?;
            File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("fsync quarantined segment", &target, e))?;
        }
        sync_dir(&qdir)?;
        fs::rename(&tmp, path)
            .map_err(|e| Error::io("replace segment with its salvaged records", path, e))?;
    } else {
        fs::rename(path, &target)
            .map_err(|e| Error::io("move segment into quarantine", path, e))?;
        sync_dir(&qdir)?;
    }
    sync_dir(dir)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SpoolConfig {
        SpoolConfig {
            max_bytes: 10_000,
            segment_bytes: 1_000,
            fsync: FsyncPolicy::Never,
            when_full: WhenFull::Block,
            cache_bytes: 1 << 20,
        }
    }

    fn stored(a: Appended) -> RecordId {
        match a {
            Appended::Stored { id, .. } => id,
            Appended::Full { .. } => panic!("spool full"),
        }
    }

    #[test]
    fn cache_hands_out_in_order_and_stays_within_its_limit() {
        let mut c = Cache {
            limit: 10,
            ..Cache::default()
        };
        c.push(1, vec![1; 4]);
        c.push(2, vec![2; 4]);
        c.push(3, vec![3; 4]);
        assert_eq!(c.bytes, 8, "the oldest entry is evicted");
        assert_eq!(c.take(1), None);
        assert_eq!(
            c.take(3),
            Some(vec![3; 4]),
            "entry 2 is given up on the way"
        );
        assert_eq!(c.bytes, 0);
        c.push(4, vec![0; 11]);
        assert!(
            c.entries.is_empty(),
            "a payload larger than the cache is not kept"
        );
    }

    #[test]
    fn dropped_collects_runs_of_ids() {
        let mut d = Dropped::default();
        for id in [3, 4, 5, 8, 9, 12] {
            d.push(id, 10);
        }
        assert_eq!(
            d.ids,
            vec![
                RecordId(3)..=RecordId(5),
                RecordId(8)..=RecordId(9),
                RecordId(12)..=RecordId(12)
            ]
        );
        assert_eq!(d.records, 6);
        assert_eq!(d.bytes, 60);
        assert_eq!(
            d.iter_ids().map(|i| i.0).collect::<Vec<_>>(),
            vec![3, 4, 5, 8, 9, 12]
        );
    }

    #[test]
    fn segments_roll_at_segment_bytes_and_go_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), config()).unwrap();
        // 8 + 5 * (20 + 180) = 1008 > 1000: four records per segment.
        let ids: Vec<RecordId> = (0..9)
            .map(|_| stored(spool.append(vec![7; 180]).unwrap()))
            .collect();
        assert_eq!(spool.stats().segments, 3);
        assert!(dir.path().join("00000000000000000004.seg").exists());
        assert!(dir.path().join("00000000000000000008.seg").exists());
        for id in &ids[..3] {
            spool.ack(*id).unwrap();
        }
        assert_eq!(
            spool.stats().segments,
            3,
            "a segment with a pending record stays"
        );
        spool.ack(ids[3]).unwrap();
        assert_eq!(spool.stats().segments, 2);
        assert!(!dir.path().join("00000000000000000000.seg").exists());
        assert_eq!(spool.stats().disk_bytes, 2 * 8 + 5 * 200);
        spool.ack(ids[8]).unwrap();
        assert_eq!(
            spool.stats().segments,
            2,
            "the active segment stays even when fully acknowledged"
        );
    }

    #[test]
    fn ids_are_not_reused_after_every_segment_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), config()).unwrap();
        let a = stored(spool.append(b"a".to_vec()).unwrap());
        let b = stored(spool.append(b"b".to_vec()).unwrap());
        spool.ack(a).unwrap();
        spool.ack(b).unwrap();
        spool.close().unwrap();
        let (mut spool, rec) = Spool::open(dir.path(), config()).unwrap();
        assert_eq!(rec.next_id, RecordId(2));
        assert_eq!(stored(spool.append(b"c".to_vec()).unwrap()), RecordId(2));
        assert_eq!(spool.next_unsent().unwrap().unwrap().payload, b"c");
    }

    #[test]
    fn ack_log_is_compacted_and_still_holds_live_acks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), config()).unwrap();
        spool.ledger_compact_min = 8;
        let ids: Vec<RecordId> = (0..40)
            .map(|_| stored(spool.append(vec![1; 100]).unwrap()))
            .collect();
        // Keep record 0 pending so its segment stays, acknowledge the rest.
        for id in &ids[1..] {
            spool.ack(*id).unwrap();
        }
        let log_len = fs::metadata(dir.path().join(ledger::ACK_LOG_NAME))
            .unwrap()
            .len();
        assert!(
            log_len < 20 + 12 * 39,
            "ack log was compacted ({log_len} bytes)"
        );
        drop(spool);
        let (mut spool, rec) = Spool::open(dir.path(), config()).unwrap();
        assert_eq!(rec.pending_records, 1);
        assert_eq!(spool.next_unsent().unwrap().unwrap().id, ids[0]);
        assert_eq!(spool.next_unsent().unwrap(), None);
    }

    #[test]
    fn under_never_closed_segments_wait_for_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), config()).unwrap();
        for _ in 0..9 {
            stored(spool.append(vec![7; 180]).unwrap());
        }
        assert_eq!(spool.stats().segments, 3);
        assert_eq!(spool.unsynced_sealed.len(), 2);
        assert_eq!(spool.stats().unsynced_records, 9);
        spool.maybe_sync(Instant::now()).unwrap();
        assert_eq!(
            spool.stats().unsynced_records,
            9,
            "Never does not sync on a tick"
        );
        spool.sync().unwrap();
        assert_eq!(spool.stats().unsynced_records, 0);
        assert!(spool.unsynced_sealed.is_empty() && !spool.dir_dirty);
    }

    #[test]
    fn maybe_sync_follows_the_interval_with_injected_time() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            fsync: FsyncPolicy::Interval(Duration::from_millis(200)),
            ..config()
        };
        let (mut spool, _) = Spool::open(dir.path(), cfg).unwrap();
        let t0 = Instant::now();
        spool.append(b"x".to_vec()).unwrap();
        assert_eq!(spool.stats().unsynced_records, 1);
        spool.maybe_sync(t0).unwrap();
        assert_eq!(
            spool.stats().unsynced_records,
            0,
            "first sync is due at once"
        );
        spool.append(b"y".to_vec()).unwrap();
        spool.maybe_sync(t0 + Duration::from_millis(199)).unwrap();
        assert_eq!(spool.stats().unsynced_records, 1, "not due yet");
        spool.maybe_sync(t0 + Duration::from_millis(200)).unwrap();
        assert_eq!(spool.stats().unsynced_records, 0);
    }

    #[test]
    fn a_record_damaged_after_open_is_counted_skipped_and_its_segment_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            cache_bytes: 0,
            ..config()
        };
        let (mut spool, _) = Spool::open(dir.path(), cfg).unwrap();
        let a = stored(spool.append(b"first".to_vec()).unwrap());
        let b = stored(spool.append(b"second".to_vec()).unwrap());
        let seg = dir.path().join(format::segment_file_name(0));
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        assert_eq!(spool.next_unsent().unwrap().unwrap().id, a);
        assert_eq!(spool.next_unsent().unwrap(), None, "record {b} is damaged");
        let stats = spool.stats();
        assert_eq!(
            (
                stats.corrupt_records,
                stats.pending_records,
                stats.unsent_records
            ),
            (1, 1, 0)
        );
        // Roll away from the segment, then acknowledge its last good record.
        let big = vec![0; 990];
        stored(spool.append(big).unwrap());
        spool.ack(a).unwrap();
        assert!(
            dir.path()
                .join(QUARANTINE_DIR)
                .join(format::segment_file_name(0))
                .exists()
        );
        assert_eq!(spool.stats().quarantined_segments, 1);
    }
}
