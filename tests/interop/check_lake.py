#!/usr/bin/env python3
"""Cross-reader interop check of a Loopline telemetry lake against the demo's summary JSON.

    .venv/bin/python tests/interop/check_lake.py --lake DIR --summary FILE

Lake layout: <lake>/telemetry/site=<s>/line=<l>/date=<YYYY-MM-DD>/hour=<HH>/part-<ingest-id>-<n:08>.parquet.
site, line, date and hour live in the path only; every file holds exactly, in this order:
ts TIMESTAMP(MICROS, UTC), device, sensor, value float64, quality int16, boot_id, seq int64
(strings dictionary-encoded, no embedded ARROW:schema).

Three readers, each with hive partitioning and explicit partition types (site/line string,
date a date, hour an integer), so that numeric-looking names such as line=01 stay strings:
  pyarrow  pyarrow.dataset.dataset(<tele>, format="parquet", partitioning=<explicit hive schema>)
  duckdb   read_parquet('<tele>/**/*.parquet', hive_partitioning = true, hive_types = {...})
  polars   pl.scan_parquet('<tele>/**/*.parquet', hive_partitioning=True, hive_schema={...})
Each checks, with aggregations in its own engine:
  - every file on its own (hive off): exactly the 7 columns above, in order, with their types;
    pyarrow and duckdb also: no ARROW:schema, string columns dictionary-encoded (polars: ARROW:schema);
  - the dataset: those 7 columns plus site/line/date/hour with the explicit types;
  - per file: the site/line/date/hour the reader exposes == the path's; ts inside that hour;
  - total rows == summary rows_committed; files read == files on disk == files_committed (once a
    compaction rewrote telemetry files: files on disk == the files the logs name, see below);
  - per (site, line, device, boot_id) -- device names are unique only within a site/line:
    rows == samples and distinct seq == first_seq..=last_seq; nothing in the lake that the summary
    lacks; no duplicate (site, line, device, boot_id, seq, sensor, ts);
  - no nulls, quality in {0,1,2}, boot_id 32 hex chars.
Then the plain, no-options reads a user would write must work and see every row (a failure or a
different row count fails the check); a site/line type other than string, or site/line values
that differ from the path's, is reported as a warning:
  pq.read_table       pyarrow.parquet.read_table(<tele>)
  ds.dataset/hive     pyarrow.dataset.dataset(<tele>, partitioning="hive")
  duckdb/defaults     read_parquet('<tele>/**/*.parquet', hive_partitioning = true)
  polars/defaults     pl.scan_parquet('<tele>/**/*.parquet', hive_partitioning=True)

The tables beside telemetry (inference, device_health, sim_labels; docs/lake.md), each checked
when its folder exists:
  <table>/files   same layout; every file's footer has exactly the table's columns, order and
                  types (timestamps us UTC, counters int64, no ARROW:schema); the files on disk
                  are exactly those the commit logs (_loopline/commits/*.log) name for the table,
                  less the files a compaction removed and plus those it added
                  (_loopline/compaction.log), with the rows each record says;
  <table>/<reader> each of the three readers, hive partitioning with explicit types: the dataset
                  schema, rows == the footers', no nulls outside the nullable columns
                  (model_version, sensor), per file the hive values == the path's and the partition
                  timestamp (ts, or start_ts for sim_labels) inside that hour; DuckDB also checks the
                  content: each table's row rules (window_start <= ts, finite score, utilisation in
                  0..1, end_ts > start_ts, ...), no duplicate rows on the table's key, and every
                  (site, line, device, boot_id) in the summary with its seqs inside first..last_seq.

Exit status: 0 all good, 1 a check failed, 2 bad invocation (missing lake or summary).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

FILE_SCHEMA = [
    ("ts", "timestamp[us,UTC]"),
    ("device", "string"),
    ("sensor", "string"),
    ("value", "float64"),
    ("quality", "int16"),
    ("boot_id", "string"),
    ("seq", "int64"),
]
HIVE_SCHEMA = [("site", "string"), ("line", "string"), ("date", "date32"), ("hour", "int32")]
FILE_COLS = [n for n, _ in FILE_SCHEMA]
HIVE_COLS = [n for n, _ in HIVE_SCHEMA]
DICT_COLS = ["device", "sensor", "boot_id"]  # dictionary-encoded string columns
ALL_COLS = FILE_COLS + HIVE_COLS
DEVICE_KEY = ["site", "line", "device", "boot_id"]
DUP_KEY = ["site", "line", "device", "boot_id", "seq", "sensor", "ts"]
PATH_RE = re.compile(
    r"^site=(?P<site>[^/]+)/line=(?P<line>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})"
    r"/hour=(?P<hour>\d{2})/part-(?P<ingest>.+)-(?P<n>\d{8})\.parquet$")
# site/line values: [A-Za-z0-9_.-], 1-64 bytes, not starting with '.'
ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
BOOT_RE = re.compile(r"^[0-9a-fA-F]{32}$")
UTC_NAMES = {"UTC", "+00:00", "Etc/UTC", "Z", "utc"}
HOUR_US = 3_600_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MAX_LINES = 8  # per problem category and reader

READERS = ("pyarrow", "duckdb", "polars")


class Usage(Exception):
    pass


# ----------------------------------------------------------------------------- helpers
def sq(s: str) -> str:
    """SQL single-quoted literal."""
    return "'" + s.replace("'", "''") + "'"


def fmt_us(us) -> str:
    if us is None:
        return "null"
    return (EPOCH + dt.timedelta(microseconds=int(us))).isoformat()


def ranges(nums) -> str:
    """[1,2,3,7] -> '1..=3, 7' (at most 6 pieces)."""
    nums = sorted(nums)
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}..={nums[j]}")
        i = j + 1
    return ", ".join(out[:6]) + (f", ... ({len(out) - 6} more runs)" if len(out) > 6 else "")


def who(key) -> str:
    site, line, device, boot = key
    return f"device {site}/{line}/{device} boot {str(boot)[:8]}.."


def short(items, n=6) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


@dataclass
class FileFacts:
    rows: int = 0
    hive: set = field(default_factory=set)      # {(site, line, 'YYYY-MM-DD', hour)} as the reader exposes them
    ts_min: int | None = None                   # epoch microseconds
    ts_max: int | None = None

    def add(self, n, site, line, date, hour, lo, hi):
        self.rows += n
        self.hive.add((site, line, date, hour))
        if lo is not None:
            self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        if hi is not None:
            self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)


@dataclass
class Facts:
    """What one reader saw, normalised to plain Python so the checks below are shared."""
    schema: list = field(default_factory=list)         # [(name, raw type, normalised type)]
    file_schemas: dict = field(default_factory=dict)   # rel path -> [(name, raw, norm)], hive off
    file_format: dict = field(default_factory=dict)    # defect text -> [rel paths]
    rows: int = 0
    files: int = 0
    files_note: str = ""
    groups: dict = field(default_factory=dict)         # (site, line, device, boot_id) -> dict(rows,nseq,min,max)
    seqs: object = None                                # callable(key) -> distinct seqs of that device boot
    dup_excess: int = 0
    dup_examples: list = field(default_factory=list)   # [(site, line, device, boot_id, seq, sensor, ts_us, n)]
    per_file: dict = field(default_factory=dict)       # rel path -> FileFacts
    nulls: dict = field(default_factory=dict)
    bad_quality: int = 0
    extra: list = field(default_factory=list)          # reader-specific notes


@dataclass
class Result:
    name: str
    version: str = "-"
    rows: object = "-"
    files: object = "-"
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    _counts: dict = field(default_factory=dict)

    def problem(self, category: str, msg: str) -> None:
        c = self._counts[category] = self._counts.get(category, 0) + 1
        if c <= MAX_LINES:
            self.problems.append(msg)
        elif c == MAX_LINES + 1:
            self.problems.append(f"... more '{category}' problems not shown")

    @property
    def status(self) -> str:
        return "FAIL" if self.problems else "OK"


def rel_to(tele: Path):
    """Path as a reader reports it -> path relative to telemetry/ (memoised: called per row group)."""
    prefix = str(tele).rstrip("/") + "/"
    memo: dict = {}

    def rel(p: str) -> str:
        r = memo.get(p)
        if r is None:
            r = memo[p] = p[len(prefix):] if p.startswith(prefix) else \
                os.path.relpath(os.path.realpath(p), os.path.realpath(tele)).replace(os.sep, "/")
        return r
    return rel


# ----------------------------------------------------------------------------- filesystem
@dataclass
class Disk:
    tele: Path
    files: list                 # rel paths of committed part files (*.parquet, no leading '.' or '_')
    tmp: list                   # rel paths of in-flight '.*.tmp' files
    other: list                 # anything else
    path_keys: dict             # rel -> dict(site, line, date, hour)
    meta: dict                  # rel -> pyarrow FileMetaData (footer)
    rows: int = 0               # sum of the footers' row counts
    sl_rows: dict = field(default_factory=dict)  # (site, line) from the path -> rows (footers)


def scan_disk(tele: Path, res: Result) -> Disk:
    import pyarrow.parquet as pq

    files, tmp, other, keys, meta = [], [], [], {}, {}
    for dirpath, dirnames, filenames in os.walk(tele):
        dirnames.sort()
        for fn in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, fn), tele).replace(os.sep, "/")
            if fn.startswith(".") and fn.endswith(".tmp"):
                tmp.append(rel)
            elif fn.endswith(".parquet") and not fn.startswith((".", "_")):
                files.append(rel)
                m = PATH_RE.match(rel)
                if m:
                    keys[rel] = {k: m.group(k) for k in ("site", "line", "date", "hour")}
            else:
                other.append(rel)
    disk = Disk(tele, files, tmp, other, keys, meta)
    for rel in files:
        try:
            meta[rel] = pq.read_metadata(tele / rel)
        except Exception as e:  # noqa: BLE001
            res.problem("file", f"{rel}: unreadable Parquet footer: {type(e).__name__}: {e}")
            continue
        disk.rows += meta[rel].num_rows
        if rel in keys:
            sl = (keys[rel]["site"], keys[rel]["line"])
            disk.sl_rows[sl] = disk.sl_rows.get(sl, 0) + meta[rel].num_rows
    return disk


def check_disk(disk: Disk, summary: dict, res: Result, live: dict | None = None) -> None:
    """`live`: the telemetry files the logs name, given once a compaction rewrote telemetry files
    (the summary's files_committed then counts what ingest wrote, not what is on disk)."""
    res.files, res.rows = len(disk.files), disk.rows
    fc = summary.get("files_committed")
    if live is None and fc != len(disk.files):
        res.problem("files", f"{len(disk.files)} *.parquet files on disk under telemetry/, summary files_committed={fc}")
    elif live is not None:
        res.notes.append(f"compacted: {len(disk.files)} *.parquet files on disk, ingest committed {fc}")
        check_against_logs("telemetry", disk, live, res)
    bad_ids = set()
    for rel in disk.files:
        k = disk.path_keys.get(rel)
        if k is None:
            res.problem("layout", "path does not follow site=<s>/line=<l>/date=YYYY-MM-DD/hour=HH/"
                        f"part-<ingest-id>-<n:08>.parquet: {rel}")
            continue
        try:
            dt.date.fromisoformat(k["date"])
            ok = 0 <= int(k["hour"]) <= 23
        except ValueError:
            ok = False
        if not ok:
            res.problem("layout", f"bad date/hour in path: {rel}")
        for col in ("site", "line"):
            if not ID_RE.match(k[col]) and (col, k[col]) not in bad_ids:
                bad_ids.add((col, k[col]))
                res.problem("layout", f"{col} value {k[col]!r} is not 1-64 of [A-Za-z0-9_.-] without a leading '.' "
                            f"(readers differ in how they decode other path values), e.g. {rel}")
    for rel in disk.other:
        if os.path.basename(rel).startswith((".", "_")):  # hidden: skipped by the readers
            res.warnings.append(f"unexpected hidden file in telemetry/: {rel}")
        else:  # would be picked up by (and choke) pyarrow on the directory
            res.problem("layout", f"unexpected file in telemetry/ (neither part-*.parquet nor .*.tmp): {rel}")
    if disk.tmp:
        res.warnings.append(f"{len(disk.tmp)} in-flight .*.tmp file(s) present (ignored by the readers), "
                            f"e.g. {disk.tmp[0]}")
    if not disk.files:
        res.problem("files", f"no *.parquet files under {disk.tele}")


DEVICE_FIELDS = {"site": str, "line": str, "device": str, "boot_id": str, "first_seq": int, "last_seq": int,
                 "batches": int, "samples": int}


def valid_device(d) -> bool:
    """A summary device entry. The demo writes first_seq/last_seq as null for a device the broker
    acknowledged no batch of; that is valid only with batches == samples == 0."""
    if not isinstance(d, dict):
        return False
    if d.get("first_seq") is None and d.get("last_seq") is None and d.get("batches") == 0 and d.get("samples") == 0:
        return all(isinstance(d.get(k), t) for k, t in DEVICE_FIELDS.items() if k not in ("first_seq", "last_seq"))
    return all(isinstance(d.get(k), t) and not isinstance(d.get(k), bool) for k, t in DEVICE_FIELDS.items())


def summary_devices(summary: dict) -> dict:
    """(site, line, device, boot_id) -> summary entry (valid entries only)."""
    return {(d["site"], d["line"], d["device"], d["boot_id"]): d
            for d in summary.get("devices") or [] if valid_device(d)}


def check_summary(summary: dict, lake: Path, res: Result) -> None:
    for key in ("rows_committed", "files_committed", "devices"):
        if key not in summary:
            res.problem("summary", f"summary has no '{key}'")
    devs = summary.get("devices") or []
    for d in devs:
        if not valid_device(d):
            res.problem("summary", f"summary device entry lacks or mistypes one of {sorted(DEVICE_FIELDS)}: {d}")
    seen = set()
    for d in (d for d in devs if valid_device(d)):
        k = (d["site"], d["line"], d["device"], d["boot_id"])
        if k in seen:
            res.problem("summary", f"summary lists {who(k)} twice")
        seen.add(k)
        if d["first_seq"] is not None and d["batches"] != d["last_seq"] - d["first_seq"] + 1:
            res.problem("summary", f"summary {who(k)}: batches={d['batches']} but "
                        f"first_seq..=last_seq = {d['first_seq']}..={d['last_seq']}")
    total = sum(d["samples"] for d in devs if valid_device(d))
    if "rows_committed" in summary and total != summary["rows_committed"]:
        res.problem("summary", f"sum of devices[].samples = {total} != rows_committed {summary['rows_committed']}")
    sp = summary.get("samples_published")
    if sp is not None and sp != summary.get("rows_committed"):
        res.problem("summary", f"samples_published {sp} != rows_committed {summary.get('rows_committed')} "
                    "(published samples not all committed, or committed twice)")
    if summary.get("lake") and os.path.realpath(summary["lake"]) != os.path.realpath(lake):
        res.warnings.append(f"summary lake {summary['lake']!r} is not --lake {str(lake)!r}")


# ----------------------------------------------------------------------------- shared checks
def evaluate_files(f: Facts, disk: Disk, res: Result) -> None:
    """Each file on its own, hive off: exactly the file columns, in order; one line per defect."""
    exp_file = dict(FILE_SCHEMA)
    bad: dict = {}
    for rel, cols in sorted(f.file_schemas.items()):
        names = [n for n, _, _ in cols]
        if names != FILE_COLS:
            bad.setdefault(f"columns {names} (expected exactly {FILE_COLS})", []).append(rel)
        for n, raw, norm in cols:
            if n in exp_file and norm != exp_file[n]:
                bad.setdefault(f"column {n} is {raw} (expected {exp_file[n]})", []).append(rel)
    for what, rels in list(bad.items()) + list(f.file_format.items()):
        res.problem("file", f"{what} in {len(rels)} of {len(disk.files)} file(s), e.g. {rels[0]}")
    if f.file_schemas and len(f.file_schemas) != len(disk.files):
        res.problem("file", f"read the schema of {len(f.file_schemas)} file(s), {len(disk.files)} on disk")


def evaluate(f: Facts, summary: dict, disk: Disk, res: Result) -> None:
    res.rows, res.files = f.rows, f.files
    exp_file = dict(FILE_SCHEMA)

    # the dataset: file columns in order, then the hive columns (in any order: DuckDB sorts them)
    got = {n: (raw, norm) for n, raw, norm in f.schema}
    for name, want in FILE_SCHEMA + HIVE_SCHEMA:
        if name not in got:
            res.problem("type", f"column {name} missing")
        elif got[name][1] != want:
            res.problem("type", f"column {name}: {got[name][0]} (expected {want})")
    if [n for n, _, _ in f.schema if n in exp_file] != FILE_COLS:
        res.problem("type", f"dataset columns {[n for n, _, _ in f.schema]} (expected {FILE_COLS} + hive columns)")
    extra = [n for n, _, _ in f.schema if n not in ALL_COLS]
    if extra:
        res.problem("type", f"unexpected dataset column(s) {extra}")

    evaluate_files(f, disk, res)

    # counts
    rc = summary.get("rows_committed")
    if f.rows != rc:
        res.problem("rows", f"{f.rows} rows, summary rows_committed={rc}")
    if f.files != len(disk.files):
        res.problem("files", f"reader saw {f.files} files{f.files_note}, {len(disk.files)} on disk")

    # per (site, line, device, boot_id)
    want = summary_devices(summary)
    for key, d in sorted(want.items()):
        g = f.groups.get(key)
        if d["first_seq"] is None:  # no batch acknowledged: nothing expected in the lake
            if g is not None:
                res.problem("device", f"{who(key)}: {g['rows']} rows in the lake, summary has no batch of it")
            continue
        if g is None:
            res.problem("device", f"{who(key)}: in the summary, no rows in the lake")
            continue
        if g["rows"] != d["samples"]:
            res.problem("device", f"{who(key)}: {g['rows']} rows, summary samples={d['samples']}")
        lo, hi = d["first_seq"], d["last_seq"]
        if not (g["min"] == lo and g["max"] == hi and g["nseq"] == hi - lo + 1):
            msg = [f"{who(key)}: distinct seq != {lo}..={hi} ({g['nseq']} distinct, min {g['min']}, max {g['max']})"]
            if hi - lo < 10_000_000 and f.seqs is not None:
                have = set(s for s in f.seqs(key) if s is not None)
                need = set(range(lo, hi + 1))
                if need - have:
                    msg.append(f"missing seq {ranges(need - have)}")
                if have - need:
                    msg.append(f"unexpected seq {ranges(have - need)}")
            res.problem("seq", "; ".join(msg))
    for key in sorted(set(f.groups) - set(want), key=lambda k: tuple(map(str, k))):
        res.problem("device", f"{who(key)}: {f.groups[key]['rows']} rows in the lake, not in the summary")

    # duplicates
    if f.dup_excess:
        ex = "; ".join(f"({s}/{ln}/{d}, {str(b)[:8]}.., seq {q}, {se}, {fmt_us(t)}) x{n}"
                       for s, ln, d, b, q, se, t, n in f.dup_examples[:3])
        res.problem("dup", f"{f.dup_excess} duplicate row(s) on ({', '.join(DUP_KEY)}), e.g. {ex}")

    # per file: the hive values the reader exposes come from the path; samples in their hour
    for rel, ff in sorted(f.per_file.items()):
        pk = disk.path_keys.get(rel)
        if pk is None:
            if rel in disk.files:
                continue  # layout problem, reported by the filesystem check
            res.problem("hive", f"reader read a file that is not a committed part file: {rel}")
            continue
        path = (pk["site"], pk["line"], pk["date"], int(pk["hour"]))
        if ff.hive != {path}:
            res.problem("hive", f"{rel}: reader exposes (site, line, date, hour) {sorted(ff.hive, key=str)}, "
                        f"path says {path}")
        start = dt.datetime.fromisoformat(f"{pk['date']}T{pk['hour']}:00:00+00:00")
        lo = (start - EPOCH) // dt.timedelta(microseconds=1)
        if ff.ts_min is not None and (ff.ts_min < lo or ff.ts_max >= lo + HOUR_US):
            res.problem("hive", f"{rel}: ts {fmt_us(ff.ts_min)} .. {fmt_us(ff.ts_max)} outside its "
                        f"date/hour partition {pk['date']}/{pk['hour']}")

    # values
    for col, n in sorted(f.nulls.items()):
        if n:
            res.problem("value", f"{n} null(s) in {col}")
    if f.bad_quality:
        res.problem("value", f"{f.bad_quality} row(s) with quality outside {{0,1,2}}")
    # boot_id format, on the distinct device boots (every boot_id is in a group key)
    bad = [k for k in f.groups if not (isinstance(k[3], str) and BOOT_RE.match(k[3]))]
    if bad:
        res.problem("value", f"{sum(f.groups[k]['rows'] for k in bad)} row(s) whose boot_id is not 32 hex chars, "
                    f"e.g. {bad[0][3]!r} of {who(bad[0])}")
    res.notes.extend(f.extra)


def evaluate_default(rows: int, types: dict, sl_rows: dict, summary: dict, disk: Disk, res: Result) -> None:
    """A plain, default-options read: must see every row; type/value differences are warnings."""
    res.rows = rows
    rc = summary.get("rows_committed")
    if rows != rc:
        res.problem("rows", f"{rows} rows, summary rows_committed={rc}")
    res.notes.append("default hive column types: " + ", ".join(f"{n} {types.get(n)}" for n in HIVE_COLS))
    for col in ("site", "line"):
        t = types.get(col)
        if t is None:
            res.problem("type", f"no {col} column")
        elif t.startswith("dictionary<values=string"):
            res.warnings.append(f"{col} is typed {t} by default (string values; pandas makes it a category)")
        elif t not in ("string", "String", "VARCHAR"):
            res.warnings.append(f"{col} is typed {t}, not a string, by default")
    got = {(str(s), str(ln)): n for (s, ln), n in sl_rows.items()}
    if got != disk.sl_rows and rows == disk.rows:
        msg = (f"(site, line) values differ from the paths': read as {short(map(repr, sorted(sl_rows, key=str)))}; "
               f"the paths have {short(map(repr, sorted(disk.sl_rows)))}")
        if len(got) < len(disk.sl_rows):
            msg += f"; {len(disk.sl_rows)} distinct (site, line) pairs collapse into {len(got)}"
        res.warnings.append(msg)


# ----------------------------------------------------------------------------- pyarrow
def norm_arrow(t) -> str:
    import pyarrow as pa
    if pa.types.is_timestamp(t):
        tz = "UTC" if t.tz in UTC_NAMES else (t.tz or "naive")
        return f"timestamp[{t.unit},{tz}]"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_dictionary(t):
        return f"dictionary<{norm_arrow(t.value_type)}>"
    if pa.types.is_date32(t):
        return "date32"
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(t), str(t))  # bool stays "bool"


def pa_explicit_partitioning():
    import pyarrow as pa
    import pyarrow.dataset as ds
    return ds.partitioning(pa.schema([("site", pa.string()), ("line", pa.string()),
                                      ("date", pa.date32()), ("hour", pa.int32())]), flavor="hive")


def file_format_pyarrow(md, rel: str, out: dict) -> None:
    """Footer checks: no ARROW:schema; string columns dictionary-encoded in every row group."""
    if b"ARROW:schema" in (md.metadata or {}):
        out.setdefault("an embedded ARROW:schema (the contract says none)", []).append(rel)
    names = [md.schema.column(j).path for j in range(md.num_columns)]
    for col in DICT_COLS:
        if col not in names:
            continue
        j = names.index(col)
        for i in range(md.num_row_groups):
            enc = md.row_group(i).column(j).encodings
            if not any("DICTIONARY" in e for e in enc):
                out.setdefault(f"column {col} not dictionary-encoded (encodings {list(enc)})", []).append(rel)
                break


def read_pyarrow(tele: Path, disk: Disk, f: Facts) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    rel = rel_to(tele)
    # Explicit hive schema: partitioning="hive" infers types from the path values (line=01 -> int32 1).
    # The default ignore_prefixes=['.', '_'] skips the in-flight '.part-*.tmp' files.
    dset = ds.dataset(str(tele), format="parquet", partitioning=pa_explicit_partitioning())
    f.schema = [(fl.name, str(fl.type), norm_arrow(fl.type)) for fl in dset.schema]
    f.files = len(dset.files)
    for p in dset.files:  # each file on its own: its footer, no partitioning
        r = rel(p)
        md = disk.meta.get(r) or pq.read_metadata(p)
        f.file_schemas[r] = [(fl.name, str(fl.type), norm_arrow(fl.type)) for fl in md.schema.to_arrow_schema()]
        file_format_pyarrow(md, r, f.file_format)

    # One scan. Its batches never span files, and the scanner fills the hive columns of a batch
    # from its file's path, so per-file facts come from each batch's first row; the global
    # aggregations run on the concatenated batches (without the per-row __filename strings).
    cols = [c for c in ALL_COLS if c in dset.schema.names]
    hive = [c for c in HIVE_COLS if c in cols]
    batches = []
    for b in dset.to_batches(columns=cols + ["__filename"]):
        n = b.num_rows
        if n == 0:
            continue
        fn = b.column("__filename")
        if fn[0] != fn[n - 1]:
            raise RuntimeError(f"a scanner batch spans files {fn[0]} and {fn[n - 1]}")
        mm = pc.min_max(b.column("ts")) if "ts" in cols else None
        v = {c: b.column(c)[0].as_py() for c in hive}
        f.per_file.setdefault(rel(fn[0].as_py()), FileFacts()).add(
            n, v.get("site"), v.get("line"), str(v.get("date")), v.get("hour"),
            *((mm["min"].cast(pa.int64()).as_py(), mm["max"].cast(pa.int64()).as_py())
              if mm is not None and mm["min"].is_valid else (None, None)))
        batches.append(b.drop_columns(["__filename"]))
    t = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else \
        dset.schema.empty_table().select(cols)
    del batches
    f.rows = t.num_rows

    g = t.group_by(DEVICE_KEY).aggregate([([], "count_all"), ("seq", "count_distinct"), ("seq", "min"), ("seq", "max")])
    for r in g.to_pylist():
        f.groups[tuple(r[k] for k in DEVICE_KEY)] = dict(rows=r["count_all"], nseq=r["seq_count_distinct"],
                                                         min=r["seq_min"], max=r["seq_max"])

    def seqs(key):
        m = pc.and_(pc.and_(pc.equal(t["site"], key[0]), pc.equal(t["line"], key[1])),
                    pc.and_(pc.equal(t["device"], key[2]), pc.equal(t["boot_id"], key[3])))
        return pc.unique(t.filter(m)["seq"]).to_pylist()
    f.seqs = seqs

    # Duplicates: the string keys (site, line, device, boot_id) and sensor are first replaced by
    # dictionary indices (dictionary_encode shares one dictionary across chunks); a hash group-by
    # on four integer columns is ~3x faster than on the seven original ones.
    if t.num_rows:
        dk = pc.dictionary_encode(pc.binary_join_element_wise(
            *(pc.cast(t[c], pa.string()) for c in DEVICE_KEY), "\x1f")).combine_chunks()
        sk = pc.dictionary_encode(t["sensor"]).combine_chunks()
        k = pa.table({"dk": dk.indices, "seq": t["seq"], "sk": sk.indices, "ts": pc.cast(t["ts"], pa.int64())})
        d = k.group_by(["dk", "seq", "sk", "ts"]).aggregate([([], "count_all")])
        if d.num_rows != t.num_rows:
            d = d.filter(pc.greater(d["count_all"], 1))
            f.dup_excess = int(pc.sum(pc.subtract(d["count_all"], 1)).as_py() or 0)
            d = d.sort_by([("dk", "ascending"), ("seq", "ascending"), ("sk", "ascending"), ("ts", "ascending")])
            for r in d.slice(0, 3).to_pylist():
                key = dk.dictionary[r["dk"]].as_py().split("\x1f")
                f.dup_examples.append((*key, r["seq"], sk.dictionary[r["sk"]].as_py(), r["ts"], r["count_all"]))
        del dk, sk, k, d

    f.nulls = {c: t[c].null_count for c in cols}
    f.bad_quality = int(pc.sum(pc.invert(pc.is_in(t["quality"], pa.array([0, 1, 2], t["quality"].type)))).as_py() or 0)
    return pa.__version__


def pa_sl_counts(t) -> dict:
    import pyarrow.compute as pc
    out = {}
    if t.num_rows == 0:
        return out
    # dictionary columns (pq.read_table's partition columns) are decoded to group on their values
    cols = {c: (pc.cast(t[c], t[c].type.value_type) if hasattr(t[c].type, "value_type") else t[c])
            for c in ("site", "line")}
    import pyarrow as pa
    g = pa.table(cols).group_by(["site", "line"]).aggregate([([], "count_all")])
    for r in g.to_pylist():
        out[(r["site"], r["line"])] = r["count_all"]
    return out


def default_pq_read_table(tele: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(str(tele))  # what pandas.read_parquet(<dir>) uses as well
    types = {n: str(t.schema.field(n).type) for n in HIVE_COLS if n in t.schema.names}
    return pa.__version__, t.num_rows, types, pa_sl_counts(t)


def default_ds_dataset(tele: Path):
    import pyarrow as pa
    import pyarrow.dataset as ds
    d = ds.dataset(str(tele), partitioning="hive")
    types = {n: str(d.schema.field(n).type) for n in HIVE_COLS if n in d.schema.names}
    t = d.to_table(columns=[c for c in ("site", "line") if c in d.schema.names])
    return pa.__version__, t.num_rows, types, pa_sl_counts(t)


# ----------------------------------------------------------------------------- duckdb
DUCK_NORM = {"TIMESTAMP WITH TIME ZONE": "timestamp[us,UTC]", "TIMESTAMP": "timestamp[us,naive]",
             "TIMESTAMP_MS": "timestamp[ms,naive]", "TIMESTAMP_NS": "timestamp[ns,naive]",
             "TIMESTAMP_S": "timestamp[s,naive]", "TIMESTAMPTZ_NS": "timestamp[ns,UTC]",
             "VARCHAR": "string", "DOUBLE": "float64", "FLOAT": "float32", "SMALLINT": "int16",
             "INTEGER": "int32", "BIGINT": "int64", "TINYINT": "int8", "DATE": "date32", "BOOLEAN": "bool"}
DUCK_HIVE_TYPES = "{'site': 'VARCHAR', 'line': 'VARCHAR', 'date': 'DATE', 'hour': 'INTEGER'}"


def norm_parquet(ptype, converted, logical) -> str:
    """Normalise a parquet_schema() row (physical, converted, logical type) to our type names."""
    logical = logical or ""
    if "TimestampType" in logical:
        unit = "ms" if "MILLIS=MilliSeconds" in logical else "us" if "MICROS=MicroSeconds" in logical \
            else "ns" if "NANOS=NanoSeconds" in logical else "?"
        return f"timestamp[{unit},{'UTC' if 'isAdjustedToUTC=1' in logical else 'naive'}]"
    if ptype == "BYTE_ARRAY" and ("StringType" in logical or converted == "UTF8"):
        return "string"
    if ptype == "DOUBLE":
        return "float64"
    if ptype == "BOOLEAN":
        return "bool"
    if ptype == "FLOAT":
        return "float32"
    if ptype == "INT32":
        return {"INT_16": "int16", "INT_8": "int8", None: "int32", "INT_32": "int32"}.get(converted, f"INT32/{converted}")
    if ptype == "INT64" and converted in (None, "INT_64"):
        return "int64"
    return f"{ptype}/{converted}/{logical}"


def duck_connect():
    import duckdb
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    return con


def read_duckdb(tele: Path, disk: Disk, f: Facts) -> str:
    import duckdb

    rel = rel_to(tele)
    con = duck_connect()
    glob = sq(str(tele) + "/**/*.parquet")
    # hive_types pins the partition column types; by default DuckDB autocasts path values
    # (site=1 -> BIGINT; line=01 stays VARCHAR only because of the leading zero).
    src = f"read_parquet({glob}, hive_partitioning = true, filename = true, hive_types = {DUCK_HIVE_TYPES})"
    con.execute(f"CREATE TEMP VIEW t AS SELECT * FROM {src}")
    f.schema = [(n, ty, DUCK_NORM.get(ty, ty)) for n, ty, *_ in con.execute("DESCRIBE t").fetchall()
                if n != "filename"]
    f.extra.append("TIMESTAMP WITH TIME ZONE is always microseconds in DuckDB, so the ts unit "
                   "is checked per file via parquet_schema()")
    order = [n for n, _, _ in f.schema if n in HIVE_COLS]
    if order != HIVE_COLS:
        f.extra.append(f"SELECT * puts the hive columns in the order {order}, not the path's {HIVE_COLS}")
    f.files = con.execute(f"SELECT count(*) FROM glob({glob})").fetchone()[0]

    # each file on its own: schema, key/value metadata, encodings
    for fn, name, ptype, conv, logical in con.execute(
            f"SELECT file_name, name, type, converted_type, logical_type FROM parquet_schema({glob})").fetchall():
        if ptype is None:  # the root group
            continue
        f.file_schemas.setdefault(rel(fn), []).append((name, f"{ptype}/{conv}/{logical}", norm_parquet(ptype, conv, logical)))
    for (fn,) in con.execute(f"SELECT DISTINCT file_name FROM parquet_kv_metadata({glob}) "
                             "WHERE decode(key) = 'ARROW:schema' ORDER BY 1").fetchall():
        f.file_format.setdefault("an embedded ARROW:schema (the contract says none)", []).append(rel(fn))
    cols_in = ", ".join(sq(c) for c in DICT_COLS)
    for fn, col, enc in con.execute(
            f"SELECT file_name, path_in_schema, any_value(encodings) FROM parquet_metadata({glob}) "
            f"WHERE path_in_schema IN ({cols_in}) GROUP BY ALL "
            "HAVING bool_or(NOT contains(encodings, 'DICTIONARY')) ORDER BY ALL").fetchall():
        f.file_format.setdefault(f"column {col} not dictionary-encoded (encodings {enc})", []).append(rel(fn))

    cols = set(n for n, _, _ in f.schema)
    have = [c for c in ALL_COLS if c in cols]
    ts_us = "epoch_us(ts)"
    # per device boot, with the null/value counts folded into the same pass
    nulls = ", ".join(f"count(*) - count({c})" for c in have)
    res = con.execute(
        f"SELECT site, line, device, boot_id, count(*), count(DISTINCT seq), min(seq), max(seq), "
        f"count(*) FILTER (WHERE quality NOT IN (0, 1, 2)), "
        f"{nulls} "
        "FROM t GROUP BY site, line, device, boot_id").fetchall()
    f.nulls = dict.fromkeys(have, 0)
    for site, line, dev, boot, rows, nseq, lo, hi, bq, *nn in res:
        f.groups[(site, line, dev, boot)] = dict(rows=rows, nseq=nseq, min=lo, max=hi)
        f.rows += rows
        f.bad_quality += bq
        for c, n in zip(have, nn):
            f.nulls[c] += n
    f.seqs = lambda k: [r[0] for r in con.execute(
        "SELECT DISTINCT seq FROM t WHERE site = ? AND line = ? AND device = ? AND boot_id = ?", list(k)).fetchall()]

    keys = ", ".join(DUP_KEY)
    excess, ngroups = con.execute(f"SELECT coalesce(sum(n - 1), 0), count(*) FROM "
                                  f"(SELECT count(*) AS n FROM t GROUP BY {keys} HAVING count(*) > 1)").fetchone()
    f.dup_excess = int(excess)
    if ngroups:
        f.dup_examples = con.execute(f"SELECT {keys.replace('ts', ts_us)}, count(*) FROM t GROUP BY ALL "
                                     "HAVING count(*) > 1 ORDER BY ALL LIMIT 3").fetchall()

    hive = ", ".join(c if c in cols else "NULL" for c in ("site", "line"))
    dh = "strftime(date, '%Y-%m-%d'), hour" if {"date", "hour"} <= cols else "NULL, NULL"
    for fn, site, line, d, h, n, lo, hi in con.execute(
            f"SELECT filename, {hive}, {dh}, count(*), min({ts_us}), max({ts_us}) FROM t GROUP BY ALL").fetchall():
        f.per_file.setdefault(rel(fn), FileFacts()).add(n, site, line, d, h, lo, hi)
    # the connection stays open: f.seqs queries it when a seq range mismatches
    return duckdb.__version__


def default_duckdb(tele: Path):
    import duckdb
    con = duck_connect()
    src = f"read_parquet({sq(str(tele) + '/**/*.parquet')}, hive_partitioning = true)"
    types = {n: ty for n, ty, *_ in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall() if n in HIVE_COLS}
    sl = {(s, ln): n for s, ln, n in con.execute(f"SELECT site, line, count(*) FROM {src} GROUP BY ALL").fetchall()}
    con.close()
    return duckdb.__version__, sum(sl.values()), types, sl


# ----------------------------------------------------------------------------- polars
def norm_polars(t) -> str:
    import polars as pl
    if isinstance(t, pl.Datetime):
        tz = "UTC" if t.time_zone in UTC_NAMES else (t.time_zone or "naive")
        return f"timestamp[{t.time_unit},{tz}]"
    return {pl.String: "string", pl.Float64: "float64", pl.Float32: "float32", pl.Int16: "int16",
            pl.Int32: "int32", pl.Int64: "int64", pl.Int8: "int8", pl.Date: "date32",
            pl.Boolean: "bool"}.get(t, str(t))


def read_polars(tele: Path, disk: Disk, f: Facts) -> str:
    import polars as pl

    rel = rel_to(tele)
    glob = str(tele) + "/**/*.parquet"
    # hive_schema must name every hive key (else SchemaFieldNotFoundError)
    hive_schema = {"site": pl.String, "line": pl.String, "date": pl.Date, "hour": pl.Int32}
    lf = pl.scan_parquet(glob, hive_partitioning=True, hive_schema=hive_schema, include_file_paths="__file")
    f.schema = [(n, str(t), norm_polars(t)) for n, t in lf.collect_schema().items() if n != "__file"]
    for p in disk.files:  # each file on its own
        f.file_schemas[p] = [(n, str(t), norm_polars(t)) for n, t in pl.read_parquet_schema(str(tele / p)).items()]
        if "ARROW:schema" in pl.read_parquet_metadata(str(tele / p)):
            f.file_format.setdefault("an embedded ARROW:schema (the contract says none)", []).append(p)

    cols = set(n for n, _, _ in f.schema)
    have = [c for c in ALL_COLS if c in cols]
    c = pl.col
    q_groups = lf.group_by(DEVICE_KEY).agg(
        pl.len().alias("rows"), c("seq").n_unique().alias("nseq"), c("seq").min().alias("lo"),
        c("seq").max().alias("hi"),
        (~c("quality").is_in([0, 1, 2])).sum().alias("bad_q"),
        *[c(x).null_count().alias(f"null_{x}") for x in have])
    q_dups = (lf.group_by(DUP_KEY).agg(pl.len().alias("n")).filter(c("n") > 1)
              .with_columns(c("ts").dt.epoch("us")))
    q_files = lf.group_by("__file", *[x if x in cols else pl.lit(None).alias(x) for x in HIVE_COLS]).agg(
        pl.len().alias("n"), c("ts").dt.epoch("us").min().alias("lo"), c("ts").dt.epoch("us").max().alias("hi"))
    groups, dups, files = pl.collect_all([q_groups, q_dups, q_files], engine="streaming")

    f.nulls = dict.fromkeys(have, 0)
    for r in groups.iter_rows(named=True):
        f.groups[tuple(r[k] for k in DEVICE_KEY)] = dict(rows=r["rows"], nseq=r["nseq"], min=r["lo"], max=r["hi"])
        f.rows += r["rows"]
        f.bad_quality += r["bad_q"] or 0
        for x in have:
            f.nulls[x] += r[f"null_{x}"]
    f.seqs = lambda k: (lf.filter((c("site") == k[0]) & (c("line") == k[1]) & (c("device") == k[2])
                                  & (c("boot_id") == k[3])).select(c("seq").unique()).collect().get_column("seq").to_list())
    f.dup_excess = int((dups.get_column("n") - 1).sum() or 0)
    f.dup_examples = list(dups.sort(DUP_KEY).select(*DUP_KEY, "n").head(3).iter_rows())
    for r in files.iter_rows(named=True):
        d = r["date"]
        f.per_file.setdefault(rel(r["__file"]), FileFacts()).add(
            r["n"], r["site"], r["line"], d.isoformat() if d is not None else None, r["hour"], r["lo"], r["hi"])
    f.files = files.get_column("__file").n_unique()
    f.files_note = " (polars only reports files that have rows)"
    return pl.__version__


def default_polars(tele: Path):
    import polars as pl
    lf = pl.scan_parquet(str(tele) + "/**/*.parquet", hive_partitioning=True)
    s = lf.collect_schema()
    types = {n: str(s[n]) for n in HIVE_COLS if n in s}
    g = lf.group_by("site", "line").agg(pl.len().alias("n")).collect(engine="streaming")
    sl = {(r[0], r[1]): r[2] for r in g.iter_rows()}
    return pl.__version__, sum(sl.values()), types, sl


# ----------------------------------------------------------------------------- other tables
@dataclass
class TableSpec:
    """A table beside telemetry, as ingest writes it (docs/lake.md)."""
    schema: list                 # [(column, normalised type)], file order
    ts: str                      # the partition timestamp column
    nullable: set                # columns that may hold nulls
    key: list                    # one row per key (site, line, ... in the dataset)
    rules: list                  # [(DuckDB SQL that must hold on every row, what a violation means)]


TS_US = "timestamp[us,UTC]"
HEALTH_INTS = ["npu_clock_mhz", "npu_throttle_level", "npu_errors", "latency_p50_us", "latency_p95_us",
               "latency_p99_us", "npu_ecc_errors", "npu_resets", "npu_failed_inferences", "spool_pending_batches",
               "spool_bytes", "spool_quarantined_segments", "dropped_samples"]
TABLES = {
    "inference": TableSpec(
        schema=[("ts", TS_US), ("window_start", TS_US), ("device", "string"), ("boot_id", "string"),
                ("seq", "int64"), ("model_version", "string"), ("score", "float32"), ("anomaly", "bool"),
                ("latency_us", "int64")],
        ts="ts", nullable={"model_version"},
        key=["site", "line", "device", "boot_id", "seq", "window_start", "ts"],
        rules=[("window_start <= ts", "window_start after ts"), ("isfinite(score)", "score not finite"),
               ("latency_us >= 0", "negative latency_us")]),
    "device_health": TableSpec(
        schema=[("ts", TS_US), ("device", "string"), ("boot_id", "string"), ("seq", "int64"),
                ("model_version", "string"), ("npu_utilisation", "float32"), ("npu_temperature_c", "float32"),
                ("npu_power_w", "float32")]
        + [(c, "int64") for c in HEALTH_INTS[:3]] + [("npu_fps", "float32")]
        + [(c, "int64") for c in HEALTH_INTS[3:]],
        ts="ts", nullable={"model_version"},
        key=["site", "line", "device", "boot_id", "seq"],
        rules=[("npu_utilisation BETWEEN 0 AND 1", "npu_utilisation outside 0..1"),
               ("isfinite(npu_temperature_c)", "npu_temperature_c not finite"),
               ("npu_power_w >= 0 AND npu_fps >= 0", "negative npu_power_w or npu_fps"),
               (" AND ".join(f"{c} >= 0" for c in HEALTH_INTS), "a negative counter")]),
    "sim_labels": TableSpec(
        schema=[("start_ts", TS_US), ("end_ts", TS_US), ("device", "string"), ("boot_id", "string"),
                ("seq", "int64"), ("fault", "string"), ("severity", "float32"), ("sensor", "string")],
        ts="start_ts", nullable={"sensor"},
        key=["site", "line", "device", "boot_id", "seq", "start_ts", "fault", "sensor"],
        rules=[("end_ts > start_ts", "end_ts not after start_ts"), ("severity BETWEEN 0 AND 1", "severity outside 0..1"),
               ("fault <> ''", "empty fault")]),
}


COMPACTION_LOG = Path("_loopline") / "compaction.log"


def json_lines(path: Path):
    """The records of a JSON-lines log; a line that does not parse (a torn last line) is skipped,
    as ingest skips it."""
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def compacted_tables(lake: Path) -> set:
    """The tables whose files a compaction rewrote (_loopline/compaction.log)."""
    log = lake / COMPACTION_LOG
    return {r.get("table") for r in json_lines(log)} if log.is_file() else set()


def committed_files(lake: Path, problems: list | None = None) -> dict | None:
    """table -> {path under the table folder: rows}, the files the logs say are in the lake: every
    commit log's files, then, in order, less those each compaction removed and plus those it added.
    None without a commit log folder. A commit line without a table is telemetry's. A compaction
    that removes a file no log before it names is reported in `problems`."""
    commits = lake / "_loopline" / "commits"
    if not commits.is_dir():
        return None
    out: dict = {}
    for log in sorted(commits.glob("*.log")):
        for r in json_lines(log):
            table = r.get("table", "telemetry")
            out.setdefault(table, {})[r["path"].split("/", 1)[-1]] = r.get("rows")
    log = lake / COMPACTION_LOG
    for r in json_lines(log) if log.is_file() else ():
        files = out.setdefault(r.get("table"), {})
        for path in r.get("removed", []):
            if files.pop(path.split("/", 1)[-1], None) is None and problems is not None:
                problems.append(f"{COMPACTION_LOG}: run {r.get('run')} removes {path}, which no log before it names")
        for added in r.get("added", []):
            files[added["path"].split("/", 1)[-1]] = added.get("rows")
    return out


def check_against_logs(table: str, disk: Disk, log: dict, res: Result) -> None:
    """The files on disk are exactly those the logs name, each with the rows its record says."""
    for rel in sorted(set(disk.files) - set(log)):
        res.problem("commit", f"{rel} is on disk but in no commit log")
    for rel in sorted(set(log) - set(disk.files)):
        res.problem("commit", f"{rel} is in the commit log but not on disk")
    for rel in sorted(set(log) & set(disk.meta)):
        if log[rel] != disk.meta[rel].num_rows:
            res.problem("commit", f"{rel}: {disk.meta[rel].num_rows} rows, its commit says {log[rel]}")


def check_table_disk(table: str, spec: TableSpec, disk: Disk, committed: dict | None, res: Result) -> None:
    """Layout, each file's footer schema, and the files on disk against the commit logs."""
    res.files, res.rows = len(disk.files), disk.rows
    for rel in disk.files:
        if rel not in disk.path_keys:
            res.problem("layout", f"path does not follow site=<s>/line=<l>/date=YYYY-MM-DD/hour=HH/"
                        f"part-<ingest-id>-<n:08>.parquet: {rel}")
    for rel in disk.other:
        res.problem("layout", f"unexpected file in {table}/ (neither part-*.parquet nor .*.tmp): {rel}")
    want = [n for n, _ in spec.schema]
    bad: dict = {}  # defect -> [rel paths], one line per defect
    for rel, md in sorted(disk.meta.items()):
        got = [(fl.name, norm_arrow(fl.type)) for fl in md.schema.to_arrow_schema()]
        if [n for n, _ in got] != want:
            bad.setdefault(f"columns {[n for n, _ in got]} (expected exactly {want})", []).append(rel)
        for n, t in got:
            if n in dict(spec.schema) and t != dict(spec.schema)[n]:
                bad.setdefault(f"column {n} is {t} (expected {dict(spec.schema)[n]})", []).append(rel)
        if b"ARROW:schema" in (md.metadata or {}):
            bad.setdefault("an embedded ARROW:schema (the contract says none)", []).append(rel)
    for what, rels in bad.items():
        res.problem("file", f"{what} in {len(rels)} of {len(disk.files)} file(s), e.g. {rels[0]}")
    if committed is None:
        res.warnings.append(f"no _loopline/commits: {table}/ files not checked against a commit log")
        return
    check_against_logs(table, disk, committed.get(table, {}), res)


def read_table_pyarrow(path: Path, spec: TableSpec, f: Facts) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    rel = rel_to(path)
    dset = ds.dataset(str(path), format="parquet", partitioning=pa_explicit_partitioning())
    f.schema = [(fl.name, str(fl.type), norm_arrow(fl.type)) for fl in dset.schema]
    f.files = len(dset.files)
    cols = [n for n in dset.schema.names]
    t = dset.to_table(columns=cols + ["__filename"])
    f.rows = t.num_rows
    f.nulls = {c: t[c].null_count for c in cols}
    if t.num_rows:
        k = pa.table({"f": t["__filename"], "site": t["site"], "line": t["line"],
                      "date": pc.cast(t["date"], pa.string()), "hour": t["hour"],
                      "ts": pc.cast(t[spec.ts], pa.int64())})
        g = k.group_by(["f", "site", "line", "date", "hour"]).aggregate([([], "count_all"), ("ts", "min"), ("ts", "max")])
        for r in g.to_pylist():
            f.per_file.setdefault(rel(r["f"]), FileFacts()).add(
                r["count_all"], r["site"], r["line"], r["date"], r["hour"], r["ts_min"], r["ts_max"])
    return pa.__version__


def read_table_duckdb(path: Path, spec: TableSpec, f: Facts) -> str:
    import duckdb

    rel = rel_to(path)
    con = duck_connect()
    glob = sq(str(path) + "/**/*.parquet")
    con.execute(f"CREATE TEMP VIEW t AS SELECT * FROM read_parquet({glob}, hive_partitioning = true, "
                f"filename = true, hive_types = {DUCK_HIVE_TYPES})")
    f.schema = [(n, ty, DUCK_NORM.get(ty, ty)) for n, ty, *_ in con.execute("DESCRIBE t").fetchall() if n != "filename"]
    f.files = con.execute(f"SELECT count(*) FROM glob({glob})").fetchone()[0]
    cols = [n for n, _, _ in f.schema]
    nulls = ", ".join(f"count(*) - count({c})" for c in cols)
    rows, *nn = con.execute(f"SELECT count(*), {nulls} FROM t").fetchone()
    f.rows = rows
    f.nulls = dict(zip(cols, nn))
    for fn, site, line, d, h, n, lo, hi in con.execute(
            f"SELECT filename, site, line, strftime(date, '%Y-%m-%d'), hour, count(*), "
            f"min(epoch_us({spec.ts})), max(epoch_us({spec.ts})) FROM t GROUP BY ALL").fetchall():
        f.per_file.setdefault(rel(fn), FileFacts()).add(n, site, line, d, h, lo, hi)
    # content, once, in this engine: row rules, duplicate keys, device boots and seqs vs the summary
    for rule, meaning in spec.rules:
        (n,) = con.execute(f"SELECT count(*) FROM t WHERE NOT ({rule})").fetchone()
        if n:
            f.extra.append(("value", f"{n} row(s) with {meaning} (rule: {rule})"))
    keys = ", ".join(spec.key)
    (excess,) = con.execute(f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM t "
                            f"GROUP BY {keys} HAVING count(*) > 1)").fetchone()
    f.dup_excess = int(excess)
    for site, line, dev, boot, n, lo, hi in con.execute(
            "SELECT site, line, device, boot_id, count(*), min(seq), max(seq) FROM t GROUP BY ALL").fetchall():
        f.groups[(site, line, dev, boot)] = dict(rows=n, min=lo, max=hi)
    con.close()
    return duckdb.__version__


def read_table_polars(path: Path, spec: TableSpec, f: Facts) -> str:
    import polars as pl

    rel = rel_to(path)
    hive_schema = {"site": pl.String, "line": pl.String, "date": pl.Date, "hour": pl.Int32}
    lf = pl.scan_parquet(str(path) + "/**/*.parquet", hive_partitioning=True, hive_schema=hive_schema,
                         include_file_paths="__file")
    f.schema = [(n, str(t), norm_polars(t)) for n, t in lf.collect_schema().items() if n != "__file"]
    cols = [n for n, _, _ in f.schema]
    c = pl.col
    nulls = lf.select(pl.len().alias("__rows"), *[c(x).null_count().alias(x) for x in cols]).collect().row(0, named=True)
    f.rows = nulls.pop("__rows")
    f.nulls = nulls
    files = lf.group_by("__file", "site", "line", "date", "hour").agg(
        pl.len().alias("n"), c(spec.ts).dt.epoch("us").min().alias("lo"),
        c(spec.ts).dt.epoch("us").max().alias("hi")).collect()
    for r in files.iter_rows(named=True):
        d = r["date"]
        f.per_file.setdefault(rel(r["__file"]), FileFacts()).add(
            r["n"], r["site"], r["line"], d.isoformat() if d is not None else None, r["hour"], r["lo"], r["hi"])
    f.files = files.get_column("__file").n_unique()
    f.files_note = " (polars only reports files that have rows)"
    return pl.__version__


READ_TABLE = {"pyarrow": read_table_pyarrow, "duckdb": read_table_duckdb, "polars": read_table_polars}


def evaluate_table(table: str, spec: TableSpec, f: Facts, summary: dict, disk: Disk, res: Result) -> None:
    res.rows, res.files = f.rows, f.files
    got = {n: (raw, norm) for n, raw, norm in f.schema}
    for name, want in spec.schema + HIVE_SCHEMA:
        if name not in got:
            res.problem("type", f"column {name} missing")
        elif got[name][1] != want:
            res.problem("type", f"column {name}: {got[name][0]} (expected {want})")
    extra = [n for n, _, _ in f.schema if n not in dict(spec.schema) and n not in HIVE_COLS]
    if extra:
        res.problem("type", f"unexpected dataset column(s) {extra}")
    if f.rows != disk.rows:
        res.problem("rows", f"{f.rows} rows, the files' footers say {disk.rows}")
    if f.files != len(disk.files) and not (f.files_note and f.files == len([m for m in disk.meta.values() if m.num_rows])):
        res.problem("files", f"reader saw {f.files} files{f.files_note}, {len(disk.files)} on disk")
    for col, n in sorted(f.nulls.items()):
        if n and col not in spec.nullable:
            res.problem("value", f"{n} null(s) in {col}")
    for rel, ff in sorted(f.per_file.items()):
        pk = disk.path_keys.get(rel)
        if pk is None:
            continue  # layout problem, reported with the files
        path = (pk["site"], pk["line"], pk["date"], int(pk["hour"]))
        if ff.hive != {path}:
            res.problem("hive", f"{rel}: reader exposes (site, line, date, hour) {sorted(ff.hive, key=str)}, "
                        f"path says {path}")
        start = dt.datetime.fromisoformat(f"{pk['date']}T{pk['hour']}:00:00+00:00")
        lo = (start - EPOCH) // dt.timedelta(microseconds=1)
        if ff.ts_min is not None and (ff.ts_min < lo or ff.ts_max >= lo + HOUR_US):
            res.problem("hive", f"{rel}: {spec.ts} {fmt_us(ff.ts_min)} .. {fmt_us(ff.ts_max)} outside its "
                        f"date/hour partition {pk['date']}/{pk['hour']}")
    # content (only the DuckDB read gathers it)
    for category, msg in f.extra:
        res.problem(category, msg)
    if f.dup_excess:
        res.problem("dup", f"{f.dup_excess} duplicate row(s) on ({', '.join(spec.key)})")
    want = summary_devices(summary)
    for key, g in sorted(f.groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        d = want.get(key)
        if d is None:
            res.problem("device", f"{who(key)}: {g['rows']} {table} rows, not in the summary")
        elif d["first_seq"] is None or g["min"] < d["first_seq"] or g["max"] > d["last_seq"]:
            res.problem("seq", f"{who(key)}: {table} seq {g['min']}..={g['max']} outside the summary's "
                        f"{d['first_seq']}..={d['last_seq']}")


def run_tables(lake: Path, summary: dict, readers, committed: dict | None) -> list[Result]:
    """The tables beside telemetry that the lake has: files and commits, then each reader.
    `committed`: the files the logs name (`committed_files`)."""
    results = []
    for table, spec in TABLES.items():
        path = lake / table
        if not path.is_dir():
            continue
        fs = Result(f"{table}/files")
        t0 = time.monotonic()
        disk = scan_disk(path, fs)
        check_table_disk(table, spec, disk, committed, fs)
        fs.seconds = time.monotonic() - t0
        results.append(fs)
        for name in readers:
            res = Result(f"{table}/{LABEL[name]}")
            t0 = time.monotonic()
            facts = Facts()
            try:
                res.version = READ_TABLE[name](path, spec, facts)
                evaluate_table(table, spec, facts, summary, disk, res)
            except Exception as e:  # noqa: BLE001
                reader_error(res, e, name)
            del facts
            release_memory()
            res.seconds = time.monotonic() - t0
            results.append(res)
    return results


# ----------------------------------------------------------------------------- main
READ = {"pyarrow": read_pyarrow, "duckdb": read_duckdb, "polars": read_polars}
LABEL = {"pyarrow": "pyarrow.dataset", "duckdb": "duckdb", "polars": "polars"}
DEFAULTS = {"pyarrow": [("pq.read_table", default_pq_read_table), ("ds.dataset/hive", default_ds_dataset)],
            "duckdb": [("duckdb/defaults", default_duckdb)],
            "polars": [("polars/defaults", default_polars)]}


def release_memory() -> None:
    """Hand pyarrow's freed memory back to the OS, so readers run one after another don't add up."""
    if "pyarrow" in sys.modules:
        import pyarrow as pa
        pa.default_memory_pool().release_unused()


def reader_error(res: Result, e: Exception, module: str) -> None:
    try:
        res.version = __import__(module).__version__
    except Exception:  # noqa: BLE001
        pass
    last = traceback.extract_tb(e.__traceback__)[-1]
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    res.problem("error", f"reader error: {type(e).__name__}: {text} (at {os.path.basename(last.filename)}:{last.lineno})")


def run(lake: Path, summary: dict, readers=READERS, defaults: bool = True) -> list[Result]:
    tele = lake / "telemetry"
    fs = Result("filesystem")
    t0 = time.monotonic()
    disk = scan_disk(tele, fs)
    log_problems: list = []
    committed = committed_files(lake, log_problems)
    for m in log_problems:
        fs.problem("commit", m)
    live = None
    if "telemetry" in compacted_tables(lake):
        live = (committed or {}).get("telemetry", {})
    check_disk(disk, summary, fs, live)
    check_summary(summary, lake, fs)
    fs.seconds = time.monotonic() - t0
    results = [fs]
    for name in readers:
        res = Result(LABEL[name])
        t0 = time.monotonic()
        facts = Facts()
        try:
            res.version = READ[name](tele, disk, facts)
            evaluate(facts, summary, disk, res)
        except Exception as e:  # noqa: BLE001 - a reader that chokes is a failed check, not a crash
            reader_error(res, e, name)
            evaluate_files(facts, disk, res)  # what it learnt file by file before it choked
        del facts  # frees the reader's data (and DuckDB connection) before the next one runs
        release_memory()
        res.seconds = time.monotonic() - t0
        results.append(res)
    for name in readers if defaults else ():
        for label, probe in DEFAULTS[name]:
            res = Result(label)
            t0 = time.monotonic()
            try:
                res.version, rows, types, sl = probe(tele)
                evaluate_default(rows, types, sl, summary, disk, res)
            except Exception as e:  # noqa: BLE001
                reader_error(res, e, name)
            release_memory()
            res.seconds = time.monotonic() - t0
            results.append(res)
    results.extend(run_tables(lake, summary, readers, committed))
    return results


def report(results: list[Result], out=None) -> bool:
    out = out or sys.stdout
    w = max(len(r.name) for r in results)
    print(f"{'reader':<{w}}  {'version':<8}  {'rows':>10}  {'files':>6}  {'secs':>5}  status", file=out)
    for r in results:
        print(f"{r.name:<{w}}  {r.version:<8}  {r.rows!s:>10}  {r.files!s:>6}  {r.seconds:5.2f}  "
              f"{r.status}{f' ({len(r.problems)} problem(s))' if r.problems else ''}", file=out)
    ok = True
    for r in results:
        for p in r.problems:
            ok = False
            print(f"FAIL {r.name}: {p}", file=out)
    for r in results:
        for m in dict.fromkeys(r.warnings):
            print(f"warn {r.name}: {m}", file=out)
        for m in dict.fromkeys(r.notes):
            print(f"note {r.name}: {m}", file=out)
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="exit 0: all checks pass; 1: a check failed; 2: bad invocation")
    ap.add_argument("--lake", required=True, help="lake root (holds telemetry/ and _loopline/)")
    ap.add_argument("--summary", required=True, help="demo summary JSON")
    ap.add_argument("--readers", default=",".join(READERS),
                    help=f"comma-separated subset of {','.join(READERS)} (default: all)")
    ap.add_argument("--no-defaults", action="store_true",
                    help="skip the plain default-options reads (pq.read_table, ds.dataset/hive, ...)")
    a = ap.parse_args(argv)
    try:
        lake = Path(a.lake)
        if not (lake / "telemetry").is_dir():
            raise Usage(f"{lake}/telemetry is not a directory")
        try:
            summary = json.loads(Path(a.summary).read_text())
        except (OSError, ValueError) as e:
            raise Usage(f"cannot read summary {a.summary}: {e}") from e
        if not isinstance(summary, dict):
            raise Usage(f"summary {a.summary} is not a JSON object")
        readers = [r.strip() for r in a.readers.split(",") if r.strip()]
        for r in readers:
            if r not in READERS:
                raise Usage(f"unknown reader {r!r}; choose from {', '.join(READERS)}")
    except Usage as e:
        print(f"check_lake: error: {e}", file=sys.stderr)
        return 2
    results = run(lake, summary, readers, defaults=not a.no_defaults)
    ok = report(results)
    nprob = sum(len(r.problems) for r in results)
    if ok:
        tables = [t for t in TABLES if (lake / t).is_dir()]
        print(f"check_lake: OK: {len(results) - 1} read(s) agree with the summary "
              f"({summary.get('rows_committed')} rows, {summary.get('files_committed')} files)"
              + (f"; tables {', '.join(tables)} checked too" if tables else ""))
        return 0
    print(f"check_lake: FAIL: {nprob} problem(s) in "
          f"{', '.join(r.name for r in results if r.problems)}; see FAIL lines above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
