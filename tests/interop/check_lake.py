#!/usr/bin/env python3
"""Cross-reader interop check of a Loopline telemetry lake against the demo's summary JSON.

    .venv/bin/python tests/interop/check_lake.py --lake DIR --summary FILE

Reads <lake>/telemetry with three independent Parquet readers, each with hive partitioning:
  pyarrow  pyarrow.dataset.dataset(<lake>/telemetry, format="parquet", partitioning=<hive>)
  duckdb   read_parquet('<lake>/telemetry/**/*.parquet', hive_partitioning = true, ...)
  polars   pl.scan_parquet('<lake>/telemetry/**/*.parquet', hive_partitioning=True, ...)
and checks, in each reader's own type system and engine:
  - column types, dataset level and file by file (ts UTC timestamp in microseconds, value
    double, quality int16, seq int64, strings are plain strings, file column order), and that
    the hive columns site/line/date/hour are present;
  - total rows == summary rows_committed, files seen == files on disk == files_committed;
  - per (device, boot_id): site/line as in the summary, rows == samples, and the distinct seq set
    is exactly first_seq..=last_seq; no lake (device, boot_id) missing from the summary;
  - no duplicate (device, boot_id, seq, sensor, ts) rows;
  - per file: the hive site/line (from the path) == the site/line stored in the file, and the
    reader's hive date/hour == the path's;
  - no nulls in key columns, quality in {0,1,2}, boot_id is 32 hex chars.
Hive partition columns are read with explicit types (site/line strings, date a date, hour an
integer) because type inference from path values differs between readers; each reader is also
probed with its plain default options and any difference is printed as a warning.

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

EXPECTED = [
    ("ts", "timestamp[us,UTC]"),
    ("site", "string"),
    ("line", "string"),
    ("device", "string"),
    ("sensor", "string"),
    ("value", "float64"),
    ("quality", "int16"),
    ("boot_id", "string"),
    ("seq", "int64"),
]
FILE_COLS = [n for n, _ in EXPECTED]
HIVE_COLS = ["site", "line", "date", "hour"]
NOT_NULL = ["ts", "site", "line", "device", "sensor", "quality", "boot_id", "seq"]
DUP_KEY = ["device", "boot_id", "seq", "sensor", "ts"]
PATH_RE = re.compile(
    r"^site=(?P<site>[^/]+)/line=(?P<line>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})"
    r"/hour=(?P<hour>\d{2})/part-(?P<ingest>.+)-(?P<n>\d+)\.parquet$")
SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
UTC_NAMES = {"UTC", "+00:00", "Etc/UTC", "Z", "utc"}
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
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(us))).isoformat()


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


@dataclass
class FileFacts:
    rows: int = 0
    hive: set = field(default_factory=set)      # {(site, line)} as the reader exposes them (hive on)
    infile: set = field(default_factory=set)    # {(site, line)} stored in the file (hive off)
    hive_dh: set = field(default_factory=set)   # {(date 'YYYY-MM-DD', hour int)} from the reader
    ts_min: int | None = None                   # epoch microseconds
    ts_max: int | None = None


@dataclass
class Facts:
    """What one reader saw, normalised to plain Python so the checks below are shared."""
    schema: list = field(default_factory=list)         # [(name, raw type, normalised type)]
    file_schemas: dict = field(default_factory=dict)   # rel path -> [(name, raw, norm)]
    rows: int = 0
    files: int = 0
    files_note: str = ""
    groups: dict = field(default_factory=dict)         # (device, boot_id) -> dict(rows,nseq,min,max,sl)
    seqs: object = None                                # callable (device, boot_id) -> sorted seqs
    dup_excess: int = 0
    dup_examples: list = field(default_factory=list)   # [(device, boot_id, seq, sensor, ts_us, n)]
    per_file: dict = field(default_factory=dict)       # rel path -> FileFacts
    nulls: dict = field(default_factory=dict)
    bad_quality: int = 0
    bad_boot_id: int = 0
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

    def problem(self, category: str, msg: str, counts: dict) -> None:
        counts[category] = counts.get(category, 0) + 1
        if counts[category] <= MAX_LINES:
            self.problems.append(msg)
        elif counts[category] == MAX_LINES + 1:
            self.problems.append(f"... more '{category}' problems not shown")

    @property
    def status(self) -> str:
        return "FAIL" if self.problems else "OK"


# ----------------------------------------------------------------------------- filesystem
@dataclass
class Disk:
    tele: Path
    files: list                 # rel paths of committed part files (*.parquet, no leading '.')
    tmp: list                   # rel paths of in-flight '.*.tmp' files
    other: list                 # anything else
    path_keys: dict             # rel -> dict(site, line, date, hour)


def scan_disk(tele: Path) -> Disk:
    files, tmp, other, keys = [], [], [], {}
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
    return Disk(tele, files, tmp, other, keys)


def check_disk(disk: Disk, summary: dict, res: Result) -> None:
    c: dict = {}
    res.files = len(disk.files)
    fc = summary.get("files_committed")
    if fc != len(disk.files):
        res.problem("files", f"{len(disk.files)} *.parquet files on disk under telemetry/, summary files_committed={fc}", c)
    for rel in disk.files:
        if rel not in disk.path_keys:
            res.problem("layout", f"path does not follow site=/line=/date=YYYY-MM-DD/hour=HH/part-<ingest-id>-<n>.parquet: {rel}", c)
    for rel in disk.other:
        if os.path.basename(rel).startswith((".", "_")):  # hidden: skipped by the readers' globs
            res.warnings.append(f"unexpected hidden file in telemetry/: {rel}")
        else:  # would also be picked up (and choke) pyarrow.dataset on the directory
            res.problem("layout", f"unexpected file in telemetry/ (neither part-*.parquet nor .*.tmp): {rel}", c)
    for rel, k in disk.path_keys.items():
        try:
            dt.date.fromisoformat(k["date"])
            ok = 0 <= int(k["hour"]) <= 23
        except ValueError:
            ok = False
        if not ok:
            res.problem("layout", f"bad date/hour in path: {rel}", c)
        for col in ("site", "line"):
            if not SAFE_ID.match(k[col]):
                res.warnings.append(f"{col} value {k[col]!r} has characters outside [A-Za-z0-9._-]; "
                                    "readers differ in how they (URI-)decode hive path values")
    if disk.tmp:
        res.warnings.append(f"{len(disk.tmp)} in-flight .*.tmp file(s) present (ignored by the readers), "
                            f"e.g. {disk.tmp[0]}")
    if not disk.files:
        res.problem("files", f"no *.parquet files under {disk.tele}", c)


DEVICE_FIELDS = {"site": str, "line": str, "device": str, "boot_id": str, "first_seq": int, "last_seq": int,
                 "batches": int, "samples": int}


def valid_device(d) -> bool:
    return isinstance(d, dict) and all(isinstance(d.get(k), t) for k, t in DEVICE_FIELDS.items())


def check_summary(summary: dict, lake: Path, res: Result) -> None:
    c: dict = {}
    for key in ("rows_committed", "files_committed", "devices"):
        if key not in summary:
            res.problem("summary", f"summary has no '{key}'", c)
    devs = summary.get("devices") or []
    bad = [d for d in devs if not valid_device(d)]
    for d in bad:
        res.problem("summary", f"summary device entry lacks or mistypes one of {sorted(DEVICE_FIELDS)}: {d}", c)
    devs = [d for d in devs if valid_device(d)]
    seen = set()
    for d in devs:
        k = (d.get("device"), d.get("boot_id"))
        if k in seen:
            res.problem("summary", f"summary lists device {k[0]} boot {k[1]} twice", c)
        seen.add(k)
        if d.get("batches") != d.get("last_seq", 0) - d.get("first_seq", 0) + 1:
            res.problem("summary", f"summary device {k[0]}: batches={d.get('batches')} but "
                        f"first_seq..=last_seq = {d.get('first_seq')}..={d.get('last_seq')}", c)
    total = sum(int(d.get("samples", 0)) for d in devs)
    if "rows_committed" in summary and total != summary["rows_committed"]:
        res.problem("summary", f"sum of devices[].samples = {total} != rows_committed {summary['rows_committed']}", c)
    sp = summary.get("samples_published")
    if sp is not None and sp != summary.get("rows_committed"):
        res.problem("summary", f"samples_published {sp} != rows_committed {summary.get('rows_committed')} "
                    "(published samples not all committed, or committed twice)", c)
    if summary.get("lake") and os.path.realpath(summary["lake"]) != os.path.realpath(lake):
        res.warnings.append(f"summary lake {summary['lake']!r} is not --lake {str(lake)!r}")


# ----------------------------------------------------------------------------- shared checks
def evaluate(f: Facts, summary: dict, disk: Disk, res: Result) -> None:
    c: dict = {}
    res.rows, res.files = f.rows, f.files
    exp = dict(EXPECTED)

    # types, dataset level
    got = {n: (raw, norm) for n, raw, norm in f.schema}
    for name, want in EXPECTED:
        if name not in got:
            res.problem("type", f"column {name} missing", c)
        elif got[name][1] != want:
            res.problem("type", f"column {name}: {got[name][0]} (expected {want})", c)
    for name in HIVE_COLS:
        if name not in got:
            res.problem("type", f"hive column {name} missing", c)
    # types, file by file (order too); the same defect in many files is reported once
    bad_files: dict = {}
    for rel, cols in sorted(f.file_schemas.items()):
        names = [n for n, _, _ in cols]
        if names != FILE_COLS:
            bad_files.setdefault(f"columns {names} (expected {FILE_COLS})", []).append(rel)
            continue
        for n, raw, norm in cols:
            if norm != exp.get(n):
                bad_files.setdefault(f"column {n} is {raw} (expected {exp.get(n)})", []).append(rel)
    for what, rels in bad_files.items():
        res.problem("file-type", f"{what} in {len(rels)} of {len(f.file_schemas)} file(s), e.g. {rels[0]}", c)

    # counts
    rc = summary.get("rows_committed")
    if f.rows != rc:
        res.problem("rows", f"{f.rows} rows, summary rows_committed={rc}", c)
    if f.files != len(disk.files):
        res.problem("files", f"reader saw {f.files} files{f.files_note}, {len(disk.files)} on disk", c)

    # per (device, boot_id)
    want = {(d["device"], d["boot_id"]): d for d in summary.get("devices") or [] if valid_device(d)}
    for key, d in sorted(want.items(), key=lambda kv: tuple(map(str, kv[0]))):
        g = f.groups.get(key)
        who = f"device {key[0]} boot {str(key[1])[:8]}.."
        if g is None:
            res.problem("device", f"{who}: in the summary, no rows in the lake", c)
            continue
        if g["sl"] != {(d["site"], d["line"])}:
            res.problem("device", f"{who}: site/line {sorted(g['sl'])}, summary says ({d['site']}, {d['line']})", c)
        if g["rows"] != d["samples"]:
            res.problem("device", f"{who}: {g['rows']} rows, summary samples={d['samples']}", c)
        lo, hi = d["first_seq"], d["last_seq"]
        if not (g["min"] == lo and g["max"] == hi and g["nseq"] == hi - lo + 1):
            msg = [f"{who}: distinct seq != {lo}..={hi} ({g['nseq']} distinct, min {g['min']}, max {g['max']})"]
            if hi - lo < 10_000_000:
                have = set(s for s in f.seqs(*key) if s is not None)
                need = set(range(lo, hi + 1))
                if need - have:
                    msg.append(f"missing seq {ranges(need - have)}")
                if have - need:
                    msg.append(f"unexpected seq {ranges(have - need)}")
            res.problem("seq", "; ".join(msg), c)
    for key in sorted(set(f.groups) - set(want), key=lambda k: tuple(map(str, k))):
        g = f.groups[key]
        res.problem("device", f"device {key[0]} boot {key[1]}: {g['rows']} rows in the lake, not in the summary", c)

    # duplicates
    if f.dup_excess:
        ex = "; ".join(f"({d}, {b[:8]}.., seq {s}, {se}, {fmt_us(t)}) x{n}" for d, b, s, se, t, n in f.dup_examples[:3])
        res.problem("dup", f"{f.dup_excess} duplicate row(s) on (device, boot_id, seq, sensor, ts), e.g. {ex}", c)

    # hive vs in-file, per file
    mism = 0
    for rel, ff in sorted(f.per_file.items()):
        pk = disk.path_keys.get(rel)
        if pk is None:
            res.problem("hive", f"reader read a file that is not a committed part file: {rel}", c)
            continue
        path_sl = {(pk["site"], pk["line"])}
        if ff.infile != path_sl or ff.hive != path_sl:
            mism += 1
            res.problem("hive", f"{rel}: path says site/line {sorted(path_sl)[0]}, file holds {sorted(ff.infile)}, "
                        f"reader exposes {sorted(ff.hive)} with hive on", c)
        if ff.hive_dh and ff.hive_dh != {(pk["date"], int(pk["hour"]))}:
            res.problem("hive", f"{rel}: reader's hive date/hour {sorted(ff.hive_dh)} != path {pk['date']}/{pk['hour']}", c)
        if ff.ts_min is not None and ff.ts_max is not None:
            start = dt.datetime.fromisoformat(f"{pk['date']}T{pk['hour']}:00:00+00:00")
            lo = int((start - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) / dt.timedelta(microseconds=1))
            hi = lo + 3_600_000_000
            if ff.ts_min < lo or ff.ts_max >= hi:
                res.warnings.append(f"{rel}: ts {fmt_us(ff.ts_min)} .. {fmt_us(ff.ts_max)} outside its date/hour partition")
    if mism:
        res.notes.append(f"site/line differ between path and file in {mism} file(s); this reader exposes the "
                         "value shown as 'reader exposes' (the in-file value is invisible with hive on)")

    # values
    for col, n in sorted(f.nulls.items()):
        if n:
            res.problem("value", f"{n} null(s) in {col}", c)
    if f.bad_quality:
        res.problem("value", f"{f.bad_quality} row(s) with quality outside {{0,1,2}}", c)
    if f.bad_boot_id:
        res.problem("value", f"{f.bad_boot_id} row(s) whose boot_id is not 32 hex chars", c)
    res.notes.extend(f.extra)


# ----------------------------------------------------------------------------- pyarrow
def norm_arrow(t) -> str:
    import pyarrow as pa
    if pa.types.is_timestamp(t):
        tz = "UTC" if t.tz in UTC_NAMES else (t.tz or "naive")
        return f"timestamp[{t.unit},{tz}]"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t):
        return "string"
    if pa.types.is_dictionary(t):
        return f"dictionary<{norm_arrow(t.value_type)}>"
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(t), str(t))


def read_pyarrow(tele: Path, disk: Disk) -> tuple[str, Facts]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    f = Facts()
    # Explicit hive schema: with partitioning="hive" pyarrow infers partition types from the path
    # values (site=1 -> int32), which then cannot merge with the in-file string column.
    part = ds.partitioning(pa.schema([("site", pa.string()), ("line", pa.string()),
                                      ("date", pa.date32()), ("hour", pa.int32())]), flavor="hive")
    # default ignore_prefixes=['.', '_'] skips the in-flight '.part-*.tmp' files
    dset = ds.dataset(str(tele), format="parquet", partitioning=part)
    f.schema = [(fl.name, str(fl.type), norm_arrow(fl.type)) for fl in dset.schema]
    f.files = len(dset.files)

    def rel(p: str) -> str:
        return os.path.relpath(p, tele).replace(os.sep, "/")

    for p in dset.files:
        sch = pq.read_schema(p)
        f.file_schemas[rel(p)] = [(fl.name, str(fl.type), norm_arrow(fl.type)) for fl in sch]
        md = pq.read_metadata(p).metadata or {}
        if b"ARROW:schema" in md:
            f.extra.append(f"{rel(p)} embeds an ARROW:schema (the contract says it should not)")
    cols = [c for c in FILE_COLS + ["date", "hour"] if c in dset.schema.names]
    t = dset.to_table(columns=cols + ["__filename"])
    f.rows = t.num_rows
    t = t.append_column("ts_us", pc.cast(t["ts"], pa.int64()))

    g = t.group_by(["device", "boot_id"]).aggregate(
        [([], "count_all"), ("seq", "count_distinct"), ("seq", "min"), ("seq", "max")])
    sl = t.group_by(["device", "boot_id", "site", "line"]).aggregate([([], "count_all")])
    for r in g.to_pylist():
        f.groups[(r["device"], r["boot_id"])] = dict(rows=r["count_all"], nseq=r["seq_count_distinct"],
                                                     min=r["seq_min"], max=r["seq_max"], sl=set())
    for r in sl.to_pylist():
        f.groups[(r["device"], r["boot_id"])]["sl"].add((r["site"], r["line"]))

    def seqs(device, boot):
        m = pc.and_(pc.equal(t["device"], device), pc.equal(t["boot_id"], boot))
        return sorted(pc.unique(t.filter(m)["seq"]).to_pylist())
    f.seqs = seqs

    d = t.group_by(["device", "boot_id", "seq", "sensor", "ts_us"]).aggregate([([], "count_all")])
    d = d.filter(pc.greater(d["count_all"], 1))
    f.dup_excess = int(pc.sum(pc.subtract(d["count_all"], 1)).as_py() or 0)
    f.dup_examples = [(r["device"], r["boot_id"], r["seq"], r["sensor"], r["ts_us"], r["count_all"])
                      for r in d.slice(0, 3).to_pylist()]

    pf = t.group_by(["__filename", "site", "line", "date", "hour"]).aggregate(
        [([], "count_all"), ("ts_us", "min"), ("ts_us", "max")])
    for r in pf.to_pylist():
        ff = f.per_file.setdefault(rel(r["__filename"]), FileFacts())
        ff.rows += r["count_all"]
        ff.hive.add((r["site"], r["line"]))
        ff.hive_dh.add((str(r["date"]), r["hour"]))
        ff.ts_min = r["ts_us_min"] if ff.ts_min is None else min(ff.ts_min, r["ts_us_min"])
        ff.ts_max = r["ts_us_max"] if ff.ts_max is None else max(ff.ts_max, r["ts_us_max"])
    for p in dset.files:  # in-file values, read straight from each file (no partitioning)
        it = pq.read_table(p, columns=["site", "line"]).group_by(["site", "line"]).aggregate([])
        f.per_file.setdefault(rel(p), FileFacts()).infile = {(r["site"], r["line"]) for r in it.to_pylist()}

    f.nulls = {c: t[c].null_count for c in NOT_NULL if c in t.column_names}
    f.bad_quality = int(pc.sum(pc.invert(pc.is_in(t["quality"], pa.array([0, 1, 2], t["quality"].type)))).as_py() or 0)
    f.bad_boot_id = int(pc.sum(pc.invert(pc.match_substring_regex(t["boot_id"], "^[0-9a-fA-F]{32}$"))).as_py() or 0)
    return pa.__version__, f


def probe_pyarrow(tele: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.dataset as ds
    out = []
    try:
        s = ds.dataset(str(tele), format="parquet", partitioning="hive").schema
        kinds = {n: str(s.field(n).type) for n in HIVE_COLS if n in s.names}
        bad = {n: k for n, k in kinds.items() if n in ("site", "line") and k != "string"}
        if bad:
            out.append(f"with partitioning='hive' (defaults) site/line become {bad}")
    except Exception as e:  # noqa: BLE001
        out.append(f"ds.dataset(..., partitioning='hive') with default inference fails: {type(e).__name__}: {e}")
    try:
        import pyarrow.parquet as pq
        pq.ParquetDataset(str(tele))  # what pq.read_table(dir) and pandas.read_parquet(dir) use
    except Exception as e:  # noqa: BLE001
        out.append(f"pq.read_table(<telemetry dir>) (and pandas.read_parquet on it) fails: {type(e).__name__}: {e} "
                   "-- its default hive discovery infers dictionary partition columns, which cannot merge with "
                   "the in-file site/line strings; pass partitioning=<explicit hive schema> or use pyarrow.dataset")
    return out


# ----------------------------------------------------------------------------- duckdb
DUCK_NORM = {"TIMESTAMP WITH TIME ZONE": "timestamp[us,UTC]", "TIMESTAMP": "timestamp[us,naive]",
             "TIMESTAMP_MS": "timestamp[ms,naive]", "TIMESTAMP_NS": "timestamp[ns,naive]",
             "TIMESTAMP_S": "timestamp[s,naive]", "TIMESTAMPTZ_NS": "timestamp[ns,UTC]",
             "VARCHAR": "string", "DOUBLE": "float64", "FLOAT": "float32", "SMALLINT": "int16",
             "INTEGER": "int32", "BIGINT": "int64", "TINYINT": "int8", "DATE": "date32"}


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
    if ptype == "FLOAT":
        return "float32"
    if ptype == "INT32":
        return {"INT_16": "int16", "INT_8": "int8", None: "int32", "INT_32": "int32"}.get(converted, f"INT32/{converted}")
    if ptype == "INT64" and converted in (None, "INT_64"):
        return "int64"
    return f"{ptype}/{converted}/{logical}"


def read_duckdb(tele: Path, disk: Disk) -> tuple[str, Facts]:
    import duckdb

    f = Facts()
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    glob = sq(str(tele) + "/**/*.parquet")
    # hive_types pins the partition column types; by default DuckDB autocasts path values
    # (site=1 -> BIGINT, hour=07 stays VARCHAR), overriding the in-file VARCHAR type.
    src = (f"read_parquet({glob}, hive_partitioning = true, filename = true, "
           "hive_types = {'site': 'VARCHAR', 'line': 'VARCHAR', 'date': 'DATE', 'hour': 'INTEGER'})")
    con.execute(f"CREATE TEMP TABLE t AS SELECT * FROM {src}")
    f.schema = [(n, ty, DUCK_NORM.get(ty, ty)) for n, ty, *_ in con.execute("DESCRIBE t").fetchall()]
    f.extra.append("TIMESTAMP WITH TIME ZONE is always microseconds in DuckDB, so the ts unit "
                   "is checked per file via parquet_schema()")
    f.files = con.execute(f"SELECT count(*) FROM glob({glob})").fetchone()[0]

    def rel(p: str) -> str:
        return os.path.relpath(p, tele).replace(os.sep, "/")

    for fn, name, ptype, conv, logical in con.execute(
            f"SELECT file_name, name, type, converted_type, logical_type FROM parquet_schema({glob})").fetchall():
        if ptype is None:  # the root group
            continue
        f.file_schemas.setdefault(rel(fn), []).append((name, f"{ptype}/{conv}/{logical}", norm_parquet(ptype, conv, logical)))
    cols = set(n for n, _, _ in f.schema)
    f.rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    for dev, boot, rows, nseq, lo, hi in con.execute(
            "SELECT device, boot_id, count(*), count(DISTINCT seq), min(seq), max(seq) FROM t GROUP BY ALL").fetchall():
        f.groups[(dev, boot)] = dict(rows=rows, nseq=nseq, min=lo, max=hi, sl=set())
    for dev, boot, site, line in con.execute("SELECT DISTINCT device, boot_id, site, line FROM t").fetchall():
        f.groups[(dev, boot)]["sl"].add((site, line))
    f.seqs = lambda d, b: [r[0] for r in con.execute(
        "SELECT DISTINCT seq FROM t WHERE device = ? AND boot_id = ? ORDER BY 1", [d, b]).fetchall()]
    ts_us = "epoch_us(ts)"
    dups = con.execute(f"SELECT device, boot_id, seq, sensor, {ts_us}, count(*) AS n FROM t "
                       "GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL").fetchall()
    f.dup_excess = sum(r[5] - 1 for r in dups)
    f.dup_examples = dups[:3]
    hive_dh = "strftime(date, '%Y-%m-%d'), hour" if {"date", "hour"} <= cols else "NULL, NULL"
    for fn, site, line, d, h, n, lo, hi in con.execute(
            f"SELECT filename, site, line, {hive_dh}, count(*), min({ts_us}), max({ts_us}) FROM t GROUP BY ALL").fetchall():
        ff = f.per_file.setdefault(rel(fn), FileFacts())
        ff.rows += n
        ff.hive.add((site, line))
        if d is not None:
            ff.hive_dh.add((d, h))
        ff.ts_min = lo if ff.ts_min is None else min(ff.ts_min, lo)
        ff.ts_max = hi if ff.ts_max is None else max(ff.ts_max, hi)
    # in-file values: the same files with hive partitioning off
    for fn, site, line in con.execute(
            f"SELECT DISTINCT filename, site, line FROM read_parquet({glob}, hive_partitioning = false, filename = true)").fetchall():
        f.per_file.setdefault(rel(fn), FileFacts()).infile.add((site, line))
    f.nulls = dict(zip(NOT_NULL, con.execute(
        "SELECT " + ", ".join(f"count(*) - count({c})" for c in NOT_NULL) + " FROM t").fetchone()))
    f.bad_quality, f.bad_boot_id = con.execute(
        "SELECT count(*) FILTER (WHERE quality NOT IN (0, 1, 2)), "
        "count(*) FILTER (WHERE NOT regexp_full_match(boot_id, '[0-9a-fA-F]{32}')) FROM t").fetchone()
    # the connection stays open: f.seqs queries it when a seq range mismatches
    return duckdb.__version__, f


def probe_duckdb(tele: Path) -> list[str]:
    import duckdb
    out = []
    con = duckdb.connect(":memory:")
    glob = sq(str(tele) + "/**/*.parquet")
    try:
        types = {n: ty for n, ty, *_ in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({glob}, hive_partitioning = true)").fetchall()}
        got = {n: types.get(n) for n in HIVE_COLS}
        if got.get("site") != "VARCHAR" or got.get("line") != "VARCHAR":
            out.append(f"read_parquet(..., hive_partitioning = true) with defaults types the hive columns as {got} "
                       "(hive_types_autocast); pin them with hive_types = {...} or hive_types_autocast = false")
    except Exception as e:  # noqa: BLE001
        out.append(f"read_parquet(..., hive_partitioning = true) with defaults fails: {type(e).__name__}: {e}")
    con.close()
    return out


# ----------------------------------------------------------------------------- polars
def norm_polars(t) -> str:
    import polars as pl
    if isinstance(t, pl.Datetime):
        tz = "UTC" if t.time_zone in UTC_NAMES else (t.time_zone or "naive")
        return f"timestamp[{t.time_unit},{tz}]"
    return {pl.String: "string", pl.Float64: "float64", pl.Float32: "float32", pl.Int16: "int16",
            pl.Int32: "int32", pl.Int64: "int64", pl.Int8: "int8", pl.Date: "date32"}.get(t, str(t))


def read_polars(tele: Path, disk: Disk) -> tuple[str, Facts]:
    import polars as pl

    f = Facts()
    glob = str(tele) + "/**/*.parquet"
    hive_schema = {"site": pl.String, "line": pl.String, "date": pl.Date, "hour": pl.Int32}
    lf = pl.scan_parquet(glob, hive_partitioning=True, hive_schema=hive_schema, include_file_paths="__file")
    df = lf.collect()
    f.schema = [(n, str(t), norm_polars(t)) for n, t in df.schema.items() if n != "__file"]
    f.rows = df.height

    def rel(p: str) -> str:
        return os.path.relpath(p, tele).replace(os.sep, "/")

    for p in disk.files:
        sch = pl.read_parquet_schema(str(tele / p))
        f.file_schemas[p] = [(n, str(t), norm_polars(t)) for n, t in sch.items()]
    files = df.get_column("__file").unique().to_list()
    f.files = len(files)
    f.files_note = " (polars only reports files that have rows)"
    df = df.with_columns(pl.col("ts").dt.epoch("us").alias("ts_us"))

    g = df.group_by("device", "boot_id").agg(pl.len().alias("rows"), pl.col("seq").n_unique().alias("nseq"),
                                             pl.col("seq").min().alias("lo"), pl.col("seq").max().alias("hi"))
    for r in g.iter_rows(named=True):
        f.groups[(r["device"], r["boot_id"])] = dict(rows=r["rows"], nseq=r["nseq"], min=r["lo"], max=r["hi"], sl=set())
    for dev, boot, site, line in df.select("device", "boot_id", "site", "line").unique().iter_rows():
        f.groups[(dev, boot)]["sl"].add((site, line))
    f.seqs = lambda d, b: sorted(df.filter((pl.col("device") == d) & (pl.col("boot_id") == b))
                                 .get_column("seq").unique().to_list())
    dups = (df.group_by("device", "boot_id", "seq", "sensor", "ts_us").agg(pl.len().alias("n"))
            .filter(pl.col("n") > 1).sort("device", "boot_id", "seq", "sensor", "ts_us"))
    f.dup_excess = int((dups.get_column("n") - 1).sum() or 0)
    f.dup_examples = list(dups.head(3).iter_rows())
    pf = df.group_by("__file", "site", "line", "date", "hour").agg(
        pl.len().alias("n"), pl.col("ts_us").min().alias("lo"), pl.col("ts_us").max().alias("hi"))
    for r in pf.iter_rows(named=True):
        ff = f.per_file.setdefault(rel(r["__file"]), FileFacts())
        ff.rows += r["n"]
        ff.hive.add((r["site"], r["line"]))
        ff.hive_dh.add((r["date"].isoformat() if r["date"] is not None else None, r["hour"]))
        ff.ts_min = r["lo"] if ff.ts_min is None else min(ff.ts_min, r["lo"])
        ff.ts_max = r["hi"] if ff.ts_max is None else max(ff.ts_max, r["hi"])
    infile = (pl.scan_parquet(glob, hive_partitioning=False, include_file_paths="__file")
              .select("__file", "site", "line").unique().collect())
    for fn, site, line in infile.iter_rows():
        f.per_file.setdefault(rel(fn), FileFacts()).infile.add((site, line))
    f.nulls = {c: df.get_column(c).null_count() for c in NOT_NULL}
    f.bad_quality = df.filter(~pl.col("quality").is_in([0, 1, 2])).height
    f.bad_boot_id = df.filter(~pl.col("boot_id").str.contains(r"^[0-9a-fA-F]{32}$")).height
    return pl.__version__, f


def probe_polars(tele: Path) -> list[str]:
    import polars as pl
    out = []
    try:
        s = pl.scan_parquet(str(tele) + "/**/*.parquet", hive_partitioning=True).collect_schema()
        got = {n: str(s.get(n)) for n in HIVE_COLS}
        if got["site"] != "String" or got["line"] != "String":
            out.append(f"scan_parquet(..., hive_partitioning=True) with defaults types hive columns as {got}")
    except Exception as e:  # noqa: BLE001
        out.append(f"scan_parquet(..., hive_partitioning=True) with defaults fails: {type(e).__name__}: {e}")
    return out


# ----------------------------------------------------------------------------- main
READ = {"pyarrow": (read_pyarrow, probe_pyarrow), "duckdb": (read_duckdb, probe_duckdb),
        "polars": (read_polars, probe_polars)}
LABEL = {"pyarrow": "pyarrow.dataset", "duckdb": "duckdb", "polars": "polars"}


def run(lake: Path, summary: dict, readers=READERS) -> list[Result]:
    tele = lake / "telemetry"
    fs = Result("filesystem")
    t0 = time.monotonic()
    disk = scan_disk(tele)
    check_disk(disk, summary, fs)
    check_summary(summary, lake, fs)
    fs.seconds = time.monotonic() - t0
    results = [fs]
    for name in readers:
        read, probe = READ[name]
        res = Result(LABEL[name])
        t0 = time.monotonic()
        try:
            version, facts = read(tele, disk)
            res.version = version
            evaluate(facts, summary, disk, res)
        except Exception as e:  # noqa: BLE001 - a reader that chokes is a failed check, not a crash
            try:
                res.version = __import__(name).__version__
            except Exception:  # noqa: BLE001
                pass
            last = traceback.extract_tb(e.__traceback__)[-1]
            res.problems.append(f"reader error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                                f"(at {os.path.basename(last.filename)}:{last.lineno})")
        try:
            res.warnings.extend(f"default options: {w}" for w in probe(tele))
        except Exception as e:  # noqa: BLE001
            res.warnings.append(f"default-options probe error: {type(e).__name__}: {e}")
        res.seconds = time.monotonic() - t0
        results.append(res)
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
    results = run(lake, summary, readers)
    ok = report(results)
    nprob = sum(len(r.problems) for r in results)
    if ok:
        print(f"check_lake: OK: {len(readers)} reader(s) agree with the summary "
              f"({summary.get('rows_committed')} rows, {summary.get('files_committed')} files)")
        return 0
    print(f"check_lake: FAIL: {nprob} problem(s) in "
          f"{', '.join(r.name for r in results if r.problems)}; see FAIL lines above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
