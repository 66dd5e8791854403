//! Effectively-once rows: which `(device, boot_id, seq)` each table already holds.
//!
//! MQTT QoS 1 is at-least-once: the broker redelivers what ingest did not acknowledge (after
//! a crash between a file's rename and the PUBACK, say), and an agent republishes what the
//! broker did not acknowledge. This module turns that into effectively-once rows.
//!
//! Design invariants:
//! - The unit is a *part*: the rows one message puts into one table and one hour partition.
//!   Parts commit independently (each table, each hour, rolls on its own), so a crash can
//!   leave a message with its telemetry committed and its health row not; a redelivery then
//!   writes exactly the parts that are missing.
//! - A part is [`PartState::Buffered`] from the moment its rows are in a partition buffer
//!   until that buffer's file commits, then [`PartState::Committed`]. A duplicate arriving
//!   while the first copy is still buffered waits for that buffer (its acknowledgement depends
//!   on it) and adds no rows.
//! - Committed state is rebuilt at start from the commit logs' `sources` ([`CommitRecord`]),
//!   so what a crash left committed-but-unacknowledged is recognised when the broker
//!   redelivers it. Buffered state is memory only: a crash loses it together with the rows,
//!   and those messages were never acknowledged.
//! - Memory is bounded: per `(table, device, boot_id)` the seqs are kept as ranges (one range
//!   for an agent publishing in order); a source not committed to for `window` (measured from
//!   the newest commit, not the wall clock, so a long outage forgets nothing) is dropped, and
//!   a source fragmented beyond `max_ranges` (one ingester of several on a shared
//!   subscription sees every other seq) forgets its oldest ranges. Forgetting can only let a
//!   very late duplicate through, never drop a row.
//! - No I/O and no clock: callers pass commit times in.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::writer::CommitRecord;

/// A set of `u64`, as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    ranges: Vec<(u64, u64)>,
}

impl SeqSet {
    /// Index of the first range whose end is at or after `seq`.
    fn position(&self, seq: u64) -> usize {
        self.ranges.partition_point(|&(_, hi)| hi < seq)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .get(self.position(seq))
            .is_some_and(|&(lo, _)| lo <= seq)
    }

    /// Adds `lo..=hi`, merging with the ranges it touches.
    pub fn insert_range(&mut self, lo: u64, hi: u64) {
        debug_assert!(lo <= hi);
        // The first range that ends at or after lo - 1 (adjacent ranges merge).
        let start = self.position(lo.saturating_sub(1));
        let mut end = start;
        let (mut new_lo, mut new_hi) = (lo, hi);
        while let Some(&(rlo, rhi)) = self.ranges.get(end) {
            if rlo > hi.saturating_add(1) {
                break;
            }
            new_lo = new_lo.min(rlo);
            new_hi = new_hi.max(rhi);
            end += 1;
        }
        self.ranges.splice(start..end, [(new_lo, new_hi)]);
    }

    pub fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Drops the lowest ranges until at most `keep` remain; returns how many went.
    fn forget_oldest(&mut self, keep: usize) -> usize {
        let excess = self.ranges.len().saturating_sub(keep);
        self.ranges.drain(..excess);
        excess
    }
}

/// Where rows come from: one boot of one device. `device` is `site/line/device` (segments
/// never contain `/`), so devices of the same name on two lines stay apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub device: Arc<str>,
    pub boot_id: Arc<str>,
}

impl Source {
    pub fn new(site: &str, line: &str, device: &str, boot_id: &str) -> Self {
        Source {
            device: format!("{site}/{line}/{device}").into(),
            boot_id: boot_id.into(),
        }
    }

    /// The device name alone (the part after the last `/`).
    pub fn device_name(&self) -> &str {
        self.device.rsplit('/').next().unwrap_or(&self.device)
    }
}

/// The messages one committed file holds rows of, per source: how a commit log record says
/// what it de-duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSeqs {
    /// The device name (the record's `site` and `line` complete its identity).
    pub device: String,
    pub boot_id: String,
    /// Seqs whose rows of this table all sit in this file, as inclusive ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<(u64, u64)>,
    /// Seqs whose rows of this table straddle hours, so this file holds one hour of them:
    /// `(seq, hours)`. The message's part is whole once `hours` files have listed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<(u64, u32)>,
}

/// The rows of one message bound for one partition buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    pub source: Source,
    pub seq: u64,
    /// How many hour partitions the message's rows of this table span (almost always 1).
    pub hours: u32,
}

/// Groups the parts of one file by source, for its commit record.
pub fn record_sources(parts: &[PartRef]) -> Vec<SourceSeqs> {
    /// Per source: whole seqs, and split ones with their hour counts.
    type Grouped = (SeqSet, Vec<(u64, u32)>);
    let mut by_source: HashMap<&Source, Grouped> = HashMap::new();
    for part in parts {
        let entry = by_source.entry(&part.source).or_default();
        if part.hours <= 1 {
            entry.0.insert(part.seq);
        } else {
            entry.1.push((part.seq, part.hours));
        }
    }
    let mut sources: Vec<SourceSeqs> = by_source
        .into_iter()
        .map(|(source, (seqs, mut split))| {
            split.sort_unstable();
            split.dedup();
            SourceSeqs {
                device: source.device_name().to_owned(),
                boot_id: source.boot_id.to_string(),
                seqs: seqs.ranges().to_vec(),
                split,
            }
        })
        .collect();
    sources.sort_by(|a, b| (&a.device, &a.boot_id).cmp(&(&b.device, &b.boot_id)));
    sources
}

/// Where one part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartState {
    /// Never seen: write its rows.
    New,
    /// In the partition buffer with this id, not yet committed: skip, wait for that buffer.
    Buffered(u64),
    /// In a committed file: skip.
    Committed,
}

#[derive(Debug, Default)]
struct Committed {
    seqs: SeqSet,
    last_commit_us: i64,
}

/// Key of a split part: which hours of it are committed, out of how many.
#[derive(Debug, Default)]
struct SplitProgress {
    hours: u32,
    done: Vec<i64>,
}

/// How much de-duplication state to keep.
#[derive(Debug, Clone, Copy)]
pub struct DedupLimits {
    /// Sources not committed to for this long (before the newest commit) are forgotten.
    pub window_us: i64,
    /// Ranges kept per `(table, device, boot_id)`; the oldest beyond it are forgotten.
    pub max_ranges: usize,
}

/// Counters of what the state holds and has forgotten.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DedupSize {
    pub sources: usize,
    pub ranges: usize,
    pub buffered_parts: usize,
    pub ranges_forgotten: u64,
    pub sources_forgotten: u64,
}

/// The de-duplication state of one ingester, over every table (tables by index).
#[derive(Debug)]
pub struct Dedup {
    limits: DedupLimits,
    committed: HashMap<(usize, Source), Committed>,
    split: HashMap<(usize, Source, u64), SplitProgress>,
    buffered: HashMap<(usize, Source, u64, i64), u64>,
    newest_commit_us: i64,
    ranges_forgotten: u64,
    sources_forgotten: u64,
}

impl Dedup {
    pub fn new(limits: DedupLimits) -> Self {
        Dedup {
            limits,
            committed: HashMap::new(),
            split: HashMap::new(),
            buffered: HashMap::new(),
            newest_commit_us: i64::MIN,
            ranges_forgotten: 0,
            sources_forgotten: 0,
        }
    }

    /// Where the part of message `(source, seq)` in `table`, `hour` stands.
    pub fn part(&self, table: usize, source: &Source, seq: u64, hour: i64) -> PartState {
        let key = (table, source.clone(), seq, hour);
        if let Some(&buffer) = self.buffered.get(&key) {
            return PartState::Buffered(buffer);
        }
        let (table, source, seq, hour) = key;
        if self
            .committed
            .get(&(table, source.clone()))
            .is_some_and(|c| c.seqs.contains(seq))
        {
            return PartState::Committed;
        }
        if self
            .split
            .get(&(table, source, seq))
            .is_some_and(|p| p.done.contains(&hour))
        {
            return PartState::Committed;
        }
        PartState::New
    }

    /// Records that the part's rows went into partition buffer `buffer`.
    pub fn buffered(&mut self, table: usize, part: &PartRef, hour: i64, buffer: u64) {
        self.buffered
            .insert((table, part.source.clone(), part.seq, hour), buffer);
    }

    /// Records that the buffer holding `parts` of `table`, `hour` is committed at `at_us`.
    pub fn committed(&mut self, table: usize, hour: i64, parts: &[PartRef], at_us: i64) {
        for part in parts {
            self.buffered
                .remove(&(table, part.source.clone(), part.seq, hour));
            self.commit_part(table, &part.source, part.seq, part.hours, hour, at_us);
        }
        self.newest_commit_us = self.newest_commit_us.max(at_us);
    }

    fn commit_part(
        &mut self,
        table: usize,
        source: &Source,
        seq: u64,
        hours: u32,
        hour: i64,
        at_us: i64,
    ) {
        let whole = if hours <= 1 {
            true
        } else {
            let progress = self
                .split
                .entry((table, source.clone(), seq))
                .or_insert_with(|| SplitProgress {
                    hours,
                    done: Vec::new(),
                });
            if !progress.done.contains(&hour) {
                progress.done.push(hour);
            }
            let whole = progress.done.len() >= progress.hours as usize;
            if whole {
                self.split.remove(&(table, source.clone(), seq));
            }
            whole
        };
        let entry = self.committed.entry((table, source.clone())).or_default();
        entry.last_commit_us = entry.last_commit_us.max(at_us);
        if whole {
            entry.seqs.insert(seq);
            self.ranges_forgotten += entry.seqs.forget_oldest(self.limits.max_ranges) as u64;
        }
    }

    /// Replays one commit record of `table` (for the rebuild at start).
    pub fn replay(&mut self, table: usize, record: &CommitRecord) {
        let hour = crate::table::hour_of(record.min_ts_us);
        for s in &record.sources {
            let source = Source::new(&record.site, &record.line, &s.device, &s.boot_id);
            let entry = self.committed.entry((table, source.clone())).or_default();
            entry.last_commit_us = entry.last_commit_us.max(record.committed_at_us);
            for &(lo, hi) in &s.seqs {
                entry.seqs.insert_range(lo, hi);
            }
            self.ranges_forgotten += entry.seqs.forget_oldest(self.limits.max_ranges) as u64;
            for &(seq, hours) in &s.split {
                self.commit_part(table, &source, seq, hours, hour, record.committed_at_us);
            }
        }
        self.newest_commit_us = self.newest_commit_us.max(record.committed_at_us);
    }

    /// Forgets sources not committed to within the window before the newest commit.
    pub fn prune(&mut self) {
        let cutoff = self.newest_commit_us.saturating_sub(self.limits.window_us);
        let before = self.committed.len();
        self.committed.retain(|_, c| c.last_commit_us >= cutoff);
        self.sources_forgotten += (before - self.committed.len()) as u64;
        let committed = &self.committed;
        self.split
            .retain(|(table, source, _), _| committed.contains_key(&(*table, source.clone())));
    }

    pub fn size(&self) -> DedupSize {
        DedupSize {
            sources: self.committed.len(),
            ranges: self.committed.values().map(|c| c.seqs.ranges().len()).sum(),
            buffered_parts: self.buffered.len(),
            ranges_forgotten: self.ranges_forgotten,
            sources_forgotten: self.sources_forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn source(device: &str) -> Source {
        Source::new("s", "l", device, "b0")
    }

    fn part(device: &str, seq: u64, hours: u32) -> PartRef {
        PartRef {
            source: source(device),
            seq,
            hours,
        }
    }

    const LIMITS: DedupLimits = DedupLimits {
        window_us: 3_600_000_000,
        max_ranges: 1000,
    };

    proptest! {
        #[test]
        fn seq_set_is_a_set(seqs in proptest::collection::vec(0u64..200, 0..300)) {
            let mut set = SeqSet::default();
            let mut model = std::collections::BTreeSet::new();
            for s in &seqs {
                set.insert(*s);
                model.insert(*s);
            }
            for s in 0..210 {
                prop_assert_eq!(set.contains(s), model.contains(&s), "seq {}", s);
            }
            // Canonical: sorted, disjoint and not adjacent.
            for w in set.ranges().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", set.ranges());
            }
        }
    }

    #[test]
    fn seq_set_merges_ranges_and_forgets_the_oldest() {
        let mut set = SeqSet::default();
        set.insert_range(10, 20);
        set.insert_range(30, 40);
        set.insert_range(21, 29);
        assert_eq!(set.ranges(), &[(10, 40)]);
        set.insert_range(0, 5);
        set.insert_range(50, 50);
        assert_eq!(set.ranges(), &[(0, 5), (10, 40), (50, 50)]);
        assert_eq!(set.forget_oldest(2), 1);
        assert_eq!(set.ranges(), &[(10, 40), (50, 50)]);
        assert!(!set.contains(3) && set.contains(10) && !set.contains(41));
    }

    #[test]
    fn a_part_is_new_then_buffered_then_committed() {
        let mut dedup = Dedup::new(LIMITS);
        let p = part("d1", 7, 1);
        assert_eq!(dedup.part(0, &p.source, 7, 100), PartState::New);
        dedup.buffered(0, &p, 100, 42);
        assert_eq!(dedup.part(0, &p.source, 7, 100), PartState::Buffered(42));
        // Another table, another device, another boot: unaffected.
        assert_eq!(dedup.part(1, &p.source, 7, 100), PartState::New);
        assert_eq!(dedup.part(0, &source("d2"), 7, 100), PartState::New);
        let other_boot = Source::new("s", "l", "d1", "b1");
        assert_eq!(dedup.part(0, &other_boot, 7, 100), PartState::New);
        dedup.committed(0, 100, std::slice::from_ref(&p), 1_000);
        assert_eq!(dedup.part(0, &p.source, 7, 100), PartState::Committed);
        assert_eq!(dedup.size().buffered_parts, 0);
    }

    #[test]
    fn a_split_part_is_whole_only_when_every_hour_is_committed() {
        let mut dedup = Dedup::new(LIMITS);
        let p = part("d1", 3, 2);
        dedup.buffered(0, &p, 10, 1);
        dedup.buffered(0, &p, 11, 2);
        dedup.committed(0, 10, std::slice::from_ref(&p), 1_000);
        // Crash here: hour 10 is in the lake, hour 11 is not. A redelivery writes hour 11 only.
        assert_eq!(dedup.part(0, &p.source, 3, 10), PartState::Committed);
        assert_eq!(dedup.part(0, &p.source, 3, 11), PartState::Buffered(2));
        dedup.committed(0, 11, std::slice::from_ref(&p), 2_000);
        assert_eq!(dedup.part(0, &p.source, 3, 11), PartState::Committed);
        assert_eq!(dedup.part(0, &p.source, 3, 12), PartState::Committed);
    }

    fn record(table: &str, hour: i64, parts: &[PartRef], at_us: i64) -> CommitRecord {
        CommitRecord {
            v: 2,
            n: 0,
            table: table.into(),
            path: String::new(),
            site: "s".into(),
            line: "l".into(),
            rows: 1,
            bytes: 1,
            min_ts_us: hour * crate::table::HOUR_US,
            max_ts_us: hour * crate::table::HOUR_US,
            committed_at_us: at_us,
            sources: record_sources(parts),
        }
    }

    #[test]
    fn the_commit_log_rebuilds_what_was_committed() {
        let parts: Vec<PartRef> = (0..10)
            .map(|seq| part("d1", seq, 1))
            .chain([part("d1", 10, 2), part("d2", 4, 1)])
            .collect();
        let r = record("telemetry", 5, &parts, 1_000);
        assert_eq!(r.sources.len(), 2);
        assert_eq!(r.sources[0].seqs, vec![(0, 9)]);
        assert_eq!(r.sources[0].split, vec![(10, 2)]);
        let json = serde_json::to_string(&r).unwrap();
        let back: CommitRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);

        let mut dedup = Dedup::new(LIMITS);
        dedup.replay(0, &back);
        for seq in 0..10 {
            assert_eq!(dedup.part(0, &source("d1"), seq, 5), PartState::Committed);
        }
        assert_eq!(dedup.part(0, &source("d2"), 4, 5), PartState::Committed);
        assert_eq!(dedup.part(0, &source("d2"), 5, 5), PartState::New);
        // Seq 10 has hour 5 committed, its other hour not.
        assert_eq!(dedup.part(0, &source("d1"), 10, 5), PartState::Committed);
        assert_eq!(dedup.part(0, &source("d1"), 10, 6), PartState::New);
        dedup.replay(0, &record("telemetry", 6, &[part("d1", 10, 2)], 2_000));
        assert_eq!(dedup.part(0, &source("d1"), 10, 6), PartState::Committed);
        assert_eq!(dedup.part(0, &source("d1"), 10, 7), PartState::Committed);
    }

    #[test]
    fn pruning_counts_from_the_newest_commit_not_the_clock() {
        let mut dedup = Dedup::new(DedupLimits {
            window_us: 100,
            max_ranges: 2,
        });
        dedup.committed(0, 1, &[part("old", 1, 1)], 1_000);
        dedup.committed(0, 1, &[part("new", 1, 1)], 1_050);
        dedup.prune();
        assert_eq!(dedup.size().sources, 2, "both within 100 µs of the newest");
        dedup.committed(0, 1, &[part("new", 2, 1)], 1_120);
        dedup.prune();
        assert_eq!(dedup.part(0, &source("old"), 1, 1), PartState::New);
        assert_eq!(dedup.part(0, &source("new"), 1, 1), PartState::Committed);
        assert_eq!(dedup.size().sources_forgotten, 1);
        // Every other seq: ranges fragment, and the oldest are forgotten beyond max_ranges.
        for seq in [10, 12, 14, 16] {
            dedup.committed(0, 1, &[part("new", seq, 1)], 1_130);
        }
        assert_eq!(dedup.size().ranges, 2);
        assert_eq!(dedup.part(0, &source("new"), 16, 1), PartState::Committed);
        assert_eq!(dedup.part(0, &source("new"), 10, 1), PartState::New);
    }
}
