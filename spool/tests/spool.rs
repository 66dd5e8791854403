//! The spool against an in-memory model, and against damaged, full and crashed directories.

#![allow(clippy::unwrap_used)]

use std::collections::{HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopline_spool::{
    Appended, Error, FsyncPolicy, QUARANTINE_DIR, RECORD_HEADER_LEN, RecordId, SEGMENT_HEADER_LEN,
    Spool, SpoolConfig, WhenFull,
};
use proptest::prelude::*;

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn stored(a: Appended) -> RecordId {
    match a {
        Appended::Stored { id, dropped } => {
            assert!(dropped.is_empty(), "unexpected drop: {dropped:?}");
            id
        }
        Appended::Full { .. } => panic!("spool unexpectedly full"),
    }
}

fn drain(spool: &mut Spool) -> Vec<(RecordId, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(r) = spool.next_unsent().unwrap() {
        out.push((r.id, r.payload));
    }
    out
}

fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut p = n.to_le_bytes().to_vec();
    p.resize(len.max(8), (n % 251) as u8);
    p.truncate(len);
    p
}

// ---------------------------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Append {
        len: usize,
    },
    Send,
    /// Acknowledge a record that was handed out (picked by index), as a PUBACK would.
    AckSent {
        pick: usize,
    },
    /// Acknowledge any pending record, sent or not.
    AckAny {
        pick: usize,
    },
    /// Acknowledge something already acknowledged, or an id never given out.
    AckBogus {
        pick: usize,
        never_assigned: bool,
    },
    Rewind,
    Sync,
    MaybeSync {
        after_ms: u64,
    },
    Reopen,
    /// Drop the spool without `close`; with `torn`, first append a record and then cut its
    /// segment inside that record, as if the process died during the write.
    Crash {
        torn: Option<(usize, u64)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..300).prop_map(|len| Op::Append { len }),
        5 => Just(Op::Send),
        5 => any::<usize>().prop_map(|pick| Op::AckSent { pick }),
        2 => any::<usize>().prop_map(|pick| Op::AckAny { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, never_assigned)| Op::AckBogus { pick, never_assigned }),
        1 => Just(Op::Rewind),
        1 => Just(Op::Sync),
        1 => (0u64..400).prop_map(|after_ms| Op::MaybeSync { after_ms }),
        1 => Just(Op::Reopen),
        1 => proptest::option::of((0usize..300, any::<u64>())).prop_map(|torn| Op::Crash { torn }),
    ]
}

fn config() -> impl Strategy<Value = SpoolConfig> {
    let fsync = prop_oneof![
        3 => Just(FsyncPolicy::Never),
        2 => Just(FsyncPolicy::Interval(Duration::from_millis(100))),
        1 => Just(FsyncPolicy::Always),
    ];
    let when_full = prop_oneof![Just(WhenFull::Block), Just(WhenFull::DropOldest)];
    (
        200u64..1500,
        2u64..6,
        fsync,
        when_full,
        prop_oneof![Just(0u64), Just(700), Just(1 << 20)],
    )
        .prop_map(
            |(segment_bytes, segments, fsync, when_full, cache_bytes)| SpoolConfig {
                max_bytes: segment_bytes * segments,
                segment_bytes,
                fsync,
                when_full,
                cache_bytes,
            },
        )
}

#[derive(Debug, Default)]
struct Model {
    /// Pending records, oldest first, and whether each was handed out since the last rewind.
    pending: VecDeque<(RecordId, Vec<u8>, bool)>,
    acked: HashSet<RecordId>,
    dropped: HashSet<RecordId>,
    /// Duplicate and unknown acks since the spool was opened.
    bogus_acks: u64,
    dropped_records: u64,
    appended: u64,
}

impl Model {
    fn reopened(&mut self) {
        for r in self.pending.iter_mut() {
            r.2 = false;
        }
        self.bogus_acks = 0;
        self.dropped_records = 0;
    }

    /// Applies an append's result; `keep` is false for a record about to be torn away.
    fn appended(
        &mut self,
        config: &SpoolConfig,
        result: Appended,
        payload: &[u8],
        keep: bool,
        stats_disk: u64,
    ) {
        match result {
            Appended::Stored { id, dropped } => {
                let dropped_ids: Vec<RecordId> = dropped.iter_ids().collect();
                assert_eq!(dropped_ids.len() as u64, dropped.records);
                if config.when_full == WhenFull::Block {
                    assert!(dropped.is_empty(), "Block never drops");
                }
                // What went is exactly the oldest pending records.
                let expected: Vec<RecordId> = self
                    .pending
                    .iter()
                    .take(dropped_ids.len())
                    .map(|r| r.0)
                    .collect();
                assert_eq!(
                    dropped_ids, expected,
                    "dropped ids are the oldest pending ones"
                );
                let bytes: u64 = self
                    .pending
                    .iter()
                    .take(dropped_ids.len())
                    .map(|r| r.1.len() as u64)
                    .sum();
                assert_eq!(dropped.bytes, bytes);
                for _ in 0..dropped_ids.len() {
                    let (id, _, _) = self.pending.pop_front().unwrap();
                    self.dropped.insert(id);
                }
                self.dropped_records += dropped.records;
                assert!(
                    !self.acked.contains(&id) && !self.dropped.contains(&id),
                    "id {id} reused"
                );
                if let Some(last) = self.pending.back() {
                    assert!(id > last.0, "ids grow");
                }
                if keep {
                    self.appended += 1;
                    self.pending.push_back((id, payload.to_vec(), false));
                }
            }
            Appended::Full { payload: back } => {
                assert_eq!(config.when_full, WhenFull::Block);
                assert_eq!(back, payload, "the payload comes back untouched");
                let needed =
                    stats_disk + RECORD_HEADER_LEN + payload.len() as u64 + SEGMENT_HEADER_LEN;
                assert!(
                    needed > config.max_bytes,
                    "refused although {needed} fits in {}",
                    config.max_bytes
                );
            }
        }
    }

    fn check(&self, spool: &Spool, config: &SpoolConfig) {
        let ids: Vec<RecordId> = spool.pending_ids().collect();
        let expected: Vec<RecordId> = self.pending.iter().map(|r| r.0).collect();
        assert_eq!(ids, expected, "pending records and their order");
        let stats = spool.stats();
        assert_eq!(stats.pending_records, self.pending.len() as u64);
        assert_eq!(
            stats.pending_bytes,
            self.pending.iter().map(|r| r.1.len() as u64).sum::<u64>()
        );
        assert_eq!(
            stats.unsent_records,
            self.pending.iter().filter(|r| !r.2).count() as u64
        );
        assert_eq!(stats.duplicate_acks + stats.unknown_acks, self.bogus_acks);
        assert_eq!(stats.dropped_records, self.dropped_records);
        assert!(
            stats.disk_bytes <= config.max_bytes,
            "{} bytes on disk, cap {}",
            stats.disk_bytes,
            config.max_bytes
        );
        assert_eq!(segment_files(spool.dir()).len() as u64, stats.segments);
        assert_eq!((stats.quarantined_segments, stats.corrupt_records), (0, 0));
    }

    /// Hands out every pending record and compares ids and payloads, then rewinds.
    fn check_replay(&mut self, spool: &mut Spool) {
        spool.rewind();
        let got = drain(spool);
        let expected: Vec<(RecordId, Vec<u8>)> =
            self.pending.iter().map(|r| (r.0, r.1.clone())).collect();
        assert_eq!(got, expected, "replay after reopen");
        spool.rewind();
        for r in self.pending.iter_mut() {
            r.2 = false;
        }
    }
}

fn run_model(config: SpoolConfig, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let (mut spool, recovery) = Spool::open(&path, config.clone()).unwrap();
    assert_eq!(recovery.next_id, RecordId(0));
    let mut model = Model::default();
    let mut counter = 0u64;
    let t0 = Instant::now();
    for op in ops {
        match op {
            Op::Append { len } => {
                counter += 1;
                let p = payload(counter, len);
                let disk = spool.stats().disk_bytes;
                let result = spool.append(p.clone()).unwrap();
                model.appended(&config, result, &p, true, disk);
            }
            Op::Send => {
                let got = spool.next_unsent().unwrap();
                let expected = model.pending.iter_mut().find(|r| !r.2);
                match (got, expected) {
                    (None, None) => {}
                    (Some(got), Some(expected)) => {
                        assert_eq!((got.id, &got.payload), (expected.0, &expected.1));
                        expected.2 = true;
                    }
                    (got, expected) => {
                        panic!("next_unsent gave {got:?}, model expected {expected:?}")
                    }
                }
            }
            Op::AckSent { pick } | Op::AckAny { pick } => {
                let only_sent = matches!(op, Op::AckSent { .. });
                let candidates: Vec<usize> = (0..model.pending.len())
                    .filter(|&i| !only_sent || model.pending[i].2)
                    .collect();
                if let Some(&i) = candidates.get(pick % candidates.len().max(1)) {
                    let (id, _, _) = model.pending.remove(i).unwrap();
                    spool.ack(id).unwrap();
                    model.acked.insert(id);
                }
            }
            Op::AckBogus {
                pick,
                never_assigned,
            } => {
                let acked: Vec<RecordId> = model.acked.iter().copied().collect();
                let id = if never_assigned || acked.is_empty() {
                    RecordId(1 << 60 | pick as u64 >> 4)
                } else {
                    acked[pick % acked.len()]
                };
                spool.ack(id).unwrap();
                model.bogus_acks += 1;
            }
            Op::Rewind => {
                spool.rewind();
                for r in model.pending.iter_mut() {
                    r.2 = false;
                }
            }
            Op::Sync => spool.sync().unwrap(),
            Op::MaybeSync { after_ms } => spool
                .maybe_sync(t0 + Duration::from_millis(after_ms))
                .unwrap(),
            Op::Reopen => {
                spool.close().unwrap();
                let (s, recovery) = Spool::open(&path, config.clone()).unwrap();
                spool = s;
                assert_eq!(recovery.torn_tails, 0);
                assert!(recovery.quarantined.is_empty());
                assert_eq!(recovery.pending_records, model.pending.len() as u64);
                model.reopened();
                model.check_replay(&mut spool);
            }
            Op::Crash { torn } => {
                let mut torn_expected = 0;
                if let Some((len, cut)) = torn {
                    counter += 1;
                    let p = payload(counter, len);
                    let disk = spool.stats().disk_bytes;
                    let result = spool.append(p.clone()).unwrap();
                    let was_stored = matches!(result, Appended::Stored { .. });
                    model.appended(&config, result, &p, !was_stored, disk);
                    drop(spool);
                    if was_stored {
                        let last = segment_files(&path).pop().unwrap();
                        let file_len = fs::metadata(&last).unwrap().len();
                        let frame = RECORD_HEADER_LEN + len as u64;
                        let start = file_len - frame;
                        let at = start + cut % frame;
                        OpenOptions::new()
                            .write(true)
                            .open(&last)
                            .unwrap()
                            .set_len(at)
                            .unwrap();
                        torn_expected = u64::from(at > start);
                    }
                } else {
                    drop(spool);
                }
                let (s, recovery) = Spool::open(&path, config.clone()).unwrap();
                spool = s;
                assert_eq!(recovery.torn_tails, torn_expected);
                assert!(recovery.quarantined.is_empty());
                model.reopened();
                model.check_replay(&mut spool);
            }
        }
        model.check(&spool, &config);
    }
    spool.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_an_in_memory_queue(config in config(), ops in proptest::collection::vec(op(), 1..80)) {
        run_model(config, ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

fn small_config() -> SpoolConfig {
    SpoolConfig {
        max_bytes: 100_000,
        segment_bytes: 10_000,
        fsync: FsyncPolicy::Interval(Duration::from_millis(200)),
        when_full: WhenFull::Block,
        cache_bytes: 1 << 20,
    }
}

/// Three 100-byte records in one closed segment; returns the segment path and record offsets.
fn three_records(dir: &Path) -> (PathBuf, Vec<u64>) {
    let (mut spool, _) = Spool::open(dir, small_config()).unwrap();
    for n in 0..3 {
        stored(spool.append(payload(n, 100)).unwrap());
    }
    spool.close().unwrap();
    let seg = dir.join("00000000000000000000.seg");
    let frame = RECORD_HEADER_LEN + 100;
    (
        seg,
        (0..3).map(|i| SEGMENT_HEADER_LEN + i * frame).collect(),
    )
}

fn assert_quarantined_and_usable(dir: &Path, damaged: &[u8], salvaged: u64) {
    let (mut spool, recovery) = Spool::open(dir, small_config()).unwrap();
    assert_eq!(recovery.quarantined.len(), 1, "{recovery:?}");
    let q = &recovery.quarantined[0];
    assert_eq!(q.salvaged_records, salvaged);
    assert_eq!(
        q.moved_to,
        dir.join(QUARANTINE_DIR).join("00000000000000000000.seg")
    );
    assert_eq!(
        fs::read(&q.moved_to).unwrap(),
        damaged,
        "the original is kept untouched"
    );
    assert_eq!(spool.stats().quarantined_segments, 1);
    assert_eq!(recovery.pending_records, salvaged);
    let replay = drain(&mut spool);
    let expected: Vec<(RecordId, Vec<u8>)> = (0..salvaged)
        .map(|n| (RecordId(n), payload(n, 100)))
        .collect();
    assert_eq!(replay, expected);
    // Ids continue past everything the damaged segment may have held.
    assert!(
        recovery.next_id >= RecordId(3),
        "next id {}",
        recovery.next_id
    );
    let id = stored(spool.append(b"after".to_vec()).unwrap());
    assert!(id >= RecordId(3));
    spool.close().unwrap();
    let (mut spool, recovery) = Spool::open(dir, small_config()).unwrap();
    assert!(
        recovery.quarantined.is_empty(),
        "the salvaged segment is clean: {recovery:?}"
    );
    let replay = drain(&mut spool);
    assert_eq!(replay.len() as u64, salvaged + 1);
    assert_eq!(replay.last().unwrap(), &(id, b"after".to_vec()));
}

#[test]
fn a_flipped_payload_byte_in_a_middle_record_quarantines_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, offsets) = three_records(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[(offsets[1] + RECORD_HEADER_LEN + 50) as usize] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    assert_quarantined_and_usable(dir.path(), &bytes, 1);
}

#[test]
fn a_flipped_length_byte_in_a_middle_record_is_not_taken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, offsets) = three_records(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[(offsets[1] + 1) as usize] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    assert_quarantined_and_usable(dir.path(), &bytes, 1);
}

#[test]
fn garbage_in_the_middle_of_a_segment_quarantines_it() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, offsets) = three_records(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let at = offsets[2] as usize;
    bytes.splice(at..at, b"garbage!".iter().copied());
    fs::write(&seg, &bytes).unwrap();
    assert_quarantined_and_usable(dir.path(), &bytes, 2);
}

#[test]
fn a_damaged_segment_header_quarantines_everything_in_it_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = three_records(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[0] = b'X';
    fs::write(&seg, &bytes).unwrap();
    assert_quarantined_and_usable(dir.path(), &bytes, 0);
}

#[test]
fn corruption_in_an_older_segment_keeps_the_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        segment_bytes: 300,
        ..small_config()
    };
    let (mut spool, _) = Spool::open(dir.path(), config.clone()).unwrap();
    for n in 0..6 {
        stored(spool.append(payload(n, 100)).unwrap());
    }
    spool.close().unwrap();
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 3, "two records per segment");
    let mut bytes = fs::read(&segs[0]).unwrap();
    bytes[(SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3) as usize] ^= 0xff;
    fs::write(&segs[0], &bytes).unwrap();
    let (mut spool, recovery) = Spool::open(dir.path(), config).unwrap();
    assert_eq!(recovery.quarantined.len(), 1);
    assert_eq!(recovery.quarantined[0].salvaged_records, 0);
    let ids: Vec<u64> = drain(&mut spool).iter().map(|r| r.0.0).collect();
    assert_eq!(ids, vec![2, 3, 4, 5]);
}

#[test]
fn a_torn_tail_is_cut_off_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, offsets) = three_records(dir.path());
    let file_len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(offsets[2] + 30)
        .unwrap();
    let (mut spool, recovery) = Spool::open(dir.path(), small_config()).unwrap();
    assert_eq!((recovery.torn_tails, recovery.torn_bytes), (1, 30));
    assert!(recovery.quarantined.is_empty());
    assert_eq!(fs::metadata(&seg).unwrap().len(), offsets[2]);
    assert!(file_len > offsets[2]);
    assert_eq!(spool.stats().torn_tails, 1);
    let ids: Vec<u64> = drain(&mut spool).iter().map(|r| r.0.0).collect();
    assert_eq!(ids, vec![0, 1]);
    assert_eq!(stored(spool.append(b"next".to_vec()).unwrap()), RecordId(2));
}

#[test]
fn stray_files_do_not_stop_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("00000000000000000007.seg"),
        b"not a segment at all",
    )
    .unwrap();
    fs::write(
        dir.path().join("00000000000000000003.seg.tmp"),
        b"left over",
    )
    .unwrap();
    fs::write(dir.path().join("README"), b"ignored").unwrap();
    let (mut spool, recovery) = Spool::open(dir.path(), small_config()).unwrap();
    assert_eq!(recovery.quarantined.len(), 1);
    assert_eq!(recovery.removed_temp_files, 1);
    assert!(dir.path().join("README").exists());
    let id = stored(spool.append(b"x".to_vec()).unwrap());
    assert!(id > RecordId(7));
}

// ---------------------------------------------------------------------------------------------
// The cap
// ---------------------------------------------------------------------------------------------

fn capped(when_full: WhenFull) -> SpoolConfig {
    // Segments of two 100-byte records (8 + 2 * 120 = 248), at most four segments.
    SpoolConfig {
        max_bytes: 1000,
        segment_bytes: 250,
        fsync: FsyncPolicy::Never,
        when_full,
        cache_bytes: 0,
    }
}

#[test]
fn block_hands_the_payload_back_until_acks_free_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), capped(WhenFull::Block)).unwrap();
    for n in 0..8 {
        stored(spool.append(payload(n, 100)).unwrap());
    }
    assert_eq!(spool.stats().disk_bytes, 4 * 248);
    let refused = payload(8, 100);
    match spool.append(refused.clone()).unwrap() {
        Appended::Full { payload } => assert_eq!(payload, refused),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(spool.stats().full_refusals, 1);
    assert_eq!(spool.stats().pending_records, 8, "nothing was dropped");
    spool.ack(RecordId(0)).unwrap();
    assert!(
        matches!(
            spool.append(refused.clone()).unwrap(),
            Appended::Full { .. }
        ),
        "half a segment frees nothing"
    );
    spool.ack(RecordId(1)).unwrap();
    assert_eq!(stored(spool.append(refused).unwrap()), RecordId(8));
}

#[test]
fn drop_oldest_reports_exactly_the_ids_it_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        segment_bytes: 400,
        ..capped(WhenFull::DropOldest)
    };
    let (mut spool, _) = Spool::open(dir.path(), config.clone()).unwrap();
    // Three records per segment (8 + 3 * 120 = 368): segments [0,1,2] [3,4,5] ...
    for n in 0..6 {
        stored(spool.append(payload(n, 100)).unwrap());
    }
    spool.ack(RecordId(1)).unwrap();
    assert_eq!(spool.next_unsent().unwrap().unwrap().id, RecordId(0));
    // 2 * 368 + 8 + 120 = 864 fits; the next segment of three does not.
    for n in 6..8 {
        stored(spool.append(payload(n, 100)).unwrap());
    }
    let result = spool.append(payload(8, 100)).unwrap();
    let Appended::Stored { id, dropped } = result else {
        panic!("DropOldest never refuses")
    };
    assert_eq!(id, RecordId(8));
    assert_eq!(
        dropped.ids,
        vec![RecordId(0)..=RecordId(0), RecordId(2)..=RecordId(2)]
    );
    assert_eq!((dropped.records, dropped.bytes), (2, 200));
    let stats = spool.stats();
    assert_eq!((stats.dropped_records, stats.dropped_bytes), (2, 200));
    assert_eq!(stats.pending_records, 6);
    assert!(stats.disk_bytes <= config.max_bytes);
    assert_eq!(
        spool.pending_ids().map(|i| i.0).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7, 8]
    );
    assert_eq!(spool.next_unsent().unwrap().unwrap().id, RecordId(3));
    // A late PUBACK for a dropped record is counted, not an error.
    spool.ack(RecordId(0)).unwrap();
    assert_eq!(spool.stats().unknown_acks, 1);
}

#[test]
fn a_record_larger_than_the_cap_is_an_error_naming_the_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), capped(WhenFull::DropOldest)).unwrap();
    stored(spool.append(payload(0, 10)).unwrap());
    let err = spool.append(vec![0; 973]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a 973-byte record takes 1001 bytes in a segment, more than the spool's max_bytes of 1000"
    );
    assert!(matches!(&err, Error::TooLarge { .. }));
    assert_eq!(err.into_payload().unwrap().len(), 973);
    assert_eq!(
        spool.stats().pending_records,
        1,
        "nothing was dropped for it"
    );
    // The largest record that fits does, in a segment of its own.
    assert!(matches!(
        spool.append(vec![0; 972]).unwrap(),
        Appended::Stored { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Durability across a killed process
// ---------------------------------------------------------------------------------------------

#[test]
fn everything_appended_survives_a_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        segment_bytes: 2_000,
        ..small_config()
    };
    let (mut spool, _) = Spool::open(dir.path(), config.clone()).unwrap();
    let ids: Vec<RecordId> = (0..40)
        .map(|n| stored(spool.append(payload(n, 150 + n as usize)).unwrap()))
        .collect();
    for id in ids.iter().filter(|id| id.0 % 3 == 0) {
        spool.ack(*id).unwrap();
    }
    // Never synced: no maybe_sync, no close. The page cache keeps what a killed process wrote.
    drop(spool);
    let (mut spool, recovery) = Spool::open(dir.path(), config).unwrap();
    assert_eq!((recovery.torn_tails, recovery.quarantined.len()), (0, 0));
    let expected: Vec<(RecordId, Vec<u8>)> = ids
        .iter()
        .filter(|id| id.0 % 3 != 0)
        .map(|id| (*id, payload(id.0, 150 + id.0 as usize)))
        .collect();
    assert_eq!(recovery.pending_records, expected.len() as u64);
    assert_eq!(drain(&mut spool), expected);
    assert_eq!(recovery.next_id, RecordId(40));
    assert_eq!(
        stored(spool.append(b"more".to_vec()).unwrap()),
        RecordId(40)
    );
}

#[test]
fn rewind_replays_what_was_in_flight_and_always_policy_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        fsync: FsyncPolicy::Always,
        ..small_config()
    };
    let (mut spool, _) = Spool::open(dir.path(), config.clone()).unwrap();
    for n in 0..4 {
        stored(spool.append(payload(n, 64)).unwrap());
    }
    assert_eq!(spool.stats().unsynced_records, 0);
    let first: Vec<u64> = drain(&mut spool).iter().map(|r| r.0.0).collect();
    assert_eq!(first, vec![0, 1, 2, 3]);
    spool.ack(RecordId(2)).unwrap();
    spool.ack(RecordId(0)).unwrap();
    spool.ack(RecordId(0)).unwrap();
    assert_eq!(spool.stats().duplicate_acks, 1);
    spool.rewind();
    let again: Vec<u64> = drain(&mut spool).iter().map(|r| r.0.0).collect();
    assert_eq!(again, vec![1, 3]);
    spool.close().unwrap();
    let (mut spool, recovery) = Spool::open(dir.path(), config).unwrap();
    assert_eq!(recovery.pending_records, 2);
    let after: Vec<u64> = drain(&mut spool).iter().map(|r| r.0.0).collect();
    assert_eq!(after, vec![1, 3]);
}
