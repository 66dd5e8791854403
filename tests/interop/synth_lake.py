#!/usr/bin/env python3
"""Build synthetic Loopline lakes (plus a matching demo summary) for the interop checks.

Layout and types follow the lake contract (ingest/src/telemetry.rs, ingest/src/writer.rs):

    <lake>/telemetry/site=<s>/line=<l>/date=<YYYY-MM-DD>/hour=<HH>/part-<ingest-id>-<n:08>.parquet
    <lake>/telemetry/.../.part-<ingest-id>-<n:08>.parquet.tmp     (in-flight, ignored by readers)
    <lake>/_loopline/commits/<ingest-id>.log                       (JSON lines, ignored by readers)

site, line, date and hour live in the path only. File columns, in order: ts
TIMESTAMP(MICROS, isAdjustedToUTC=true), device, sensor (strings, dictionary-encoded, no embedded
Arrow schema), value float64, quality int16, boot_id (32 hex chars), seq int64. Each sample goes to
the partition of its own UTC hour; rows of a file are sorted by (device, sensor, ts, boot_id, seq).

The good lake has three lines whose names look like numbers (plant-a/01, plant-a/02, plant-b/01),
the same device names in every line (device names are unique only within a site/line), a device
that rebooted (two boot ids, seq restarting at 0), a batch that straddles midnight (date and hour
change mid-batch), an in-flight .tmp file and the _loopline folder.

Beside telemetry it writes the inference (two windows per batch), device_health (one snapshot
per batch) and sim_labels (press-2 only) tables, one file per partition, named in the same
commit log, with nulls where the contract allows them (robot-1's first boot has no
model_version; machine-fault labels no sensor).

Variants (``VARIANTS``) are the good lake or one deliberate defect; where it makes sense the
summary is adjusted so that *only* the intended check trips.

CLI:  python tests/interop/synth_lake.py OUT_DIR [--variant NAME] [--rows N] [--files-per-partition K]
      -> OUT_DIR/lake/... and OUT_DIR/summary.json
      (--rows 1000000 builds a ~1M-row lake for timing the checker)
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

UTC = dt.timezone.utc
INGEST_ID = "ing-20240310-0001"  # contains '-' on purpose: part-<ingest-id>-<n>.parquet

# required (non-null) columns, as the Rust writer declares them
SCHEMA = pa.schema([pa.field(n, t, nullable=False) for n, t in [
    ("ts", pa.timestamp("us", tz="UTC")),
    ("device", pa.string()),
    ("sensor", pa.string()),
    ("value", pa.float64()),
    ("quality", pa.int16()),
    ("boot_id", pa.string()),
    ("seq", pa.int64()),
]])
STRING_COLS = ["device", "sensor", "boot_id"]
SENSORS = ("temp", "pressure", "vibration", "current")
# a row: (site, line, ts_us, device, sensor, value, quality, boot_id, seq)
SITE, LINE, TS, DEVICE, SENSOR, VALUE, QUALITY, BOOT, SEQ = range(9)
FILE_COL_IDX = [TS, DEVICE, SENSOR, VALUE, QUALITY, BOOT, SEQ]

LINES = {
    # numeric-looking line names: default hive type inference turns '01' into the integer 1
    "good": [("plant-a", "01"), ("plant-a", "02"), ("plant-b", "01")],
    # numeric-looking sites too, and line '01' next to line '1': inferred as integers they collide
    "good_numeric_ids": [("1", "01"), ("1", "1"), ("2", "01")],
}
DEVICE_NAMES = ("press-1", "press-2", "robot-1")  # the same names in every line
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
START_US = (dt.datetime(2024, 3, 10, 23, 39, 59, 750_000, tzinfo=UTC) - EPOCH) // dt.timedelta(microseconds=1)
SAMPLE_STEP_US = 100_000

VARIANTS = (
    "good",                  # passes; numeric-looking line names, a .tmp file and the _loopline folder
    "good_numeric_ids",      # passes; site '1'/'2', line '01' and '1': default typing makes ints, collides
    "missing_seq",           # one batch missing in the middle of a device's seq range
    "extra_seq",             # one batch beyond the summary's last_seq
    "duplicate_row",         # one row written twice in the same file
    "duplicate_batch",       # one whole batch written again in another file (replayed write)
    "misplaced_file",        # one plant-a/01 file sits under plant-b/01 (same device names there)
    "wrong_type_quality",    # one file has quality as int32
    "wrong_type_ts_ms",      # one file has ts in milliseconds
    "wrong_type_ts_naive",   # every file has ts with isAdjustedToUTC=false
    "wrong_type_value",      # every file has value as float32
    "legacy_site_line",      # every file also holds site and line columns (the old layout)
    "column_order",          # one file has seq before boot_id
    "arrow_schema",          # every file embeds an ARROW:schema
    "plain_strings",         # device is not dictionary-encoded in any file
    "hour_mismatch",         # one file's rows belong to the next hour
    "files_mismatch",        # summary files_committed off by one
    "rows_mismatch",         # summary rows_committed off by one
    "telemetry_only",        # passes; no inference, device_health or sim_labels tables at all
    "inference_ts_naive",    # every inference file has ts with isAdjustedToUTC=false
    "health_uncommitted",    # one device_health file on disk that no commit log names
    "labels_bad_span",       # one sim label ends before it starts
)

# ------------------------------------------------------------------ the tables beside telemetry
# (ingest/src/inference.rs, device_health.rs, sim_labels.rs): (column, type, nullable), file order
HEALTH_FLOATS = ("npu_utilisation", "npu_temperature_c", "npu_power_w")
HEALTH_INTS = ("npu_clock_mhz", "npu_throttle_level", "npu_errors", "latency_p50_us", "latency_p95_us",
               "latency_p99_us", "npu_ecc_errors", "npu_resets", "npu_failed_inferences", "spool_pending_batches",
               "spool_bytes", "spool_quarantined_segments", "dropped_samples")
TS_UTC = pa.timestamp("us", tz="UTC")
TABLE_SCHEMAS = {
    "inference": [("ts", TS_UTC, False), ("window_start", TS_UTC, False), ("device", pa.string(), False),
                  ("boot_id", pa.string(), False), ("seq", pa.int64(), False), ("model_version", pa.string(), True),
                  ("score", pa.float32(), False), ("anomaly", pa.bool_(), False), ("latency_us", pa.int64(), False)],
    "device_health": [("ts", TS_UTC, False), ("device", pa.string(), False), ("boot_id", pa.string(), False),
                      ("seq", pa.int64(), False), ("model_version", pa.string(), True)]
    + [(c, pa.float32(), False) for c in HEALTH_FLOATS] + [(c, pa.int64(), False) for c in HEALTH_INTS[:3]]
    + [("npu_fps", pa.float32(), False)] + [(c, pa.int64(), False) for c in HEALTH_INTS[3:]],
    "sim_labels": [("start_ts", TS_UTC, False), ("end_ts", TS_UTC, False), ("device", pa.string(), False),
                   ("boot_id", pa.string(), False), ("seq", pa.int64(), False), ("fault", pa.string(), False),
                   ("severity", pa.float32(), False), ("sensor", pa.string(), True)],
}
TABLE_TS = {"inference": "ts", "device_health": "ts", "sim_labels": "start_ts"}


def table_rows(devs, samples_per_batch: int, interval_us: int) -> dict:
    """table -> [(site, line, row dict)] for every batch of every device boot."""
    out = {t: [] for t in TABLE_SCHEMAS}
    span = samples_per_batch * SAMPLE_STEP_US
    for site, line, device, boot_id, first_seq, n_batches, offset in devs:
        jitter = 10_000 * DEVICE_NAMES.index(device)
        # robot-1's first boot ran no named model: model_version is null there
        version = None if device == "robot-1" and offset == 0 else "m-2024-03-01"
        for b in range(n_batches):
            seq = first_seq + b
            batch_us = START_US + (b + offset) * interval_us + jitter
            base = dict(device=device, boot_id=boot_id, seq=seq)
            for k in range(2):  # two windows per batch
                start = batch_us + k * span // 2
                out["inference"].append((site, line, dict(
                    base, ts=start + span // 2 - 1, window_start=start, model_version=version,
                    score=0.125 * (seq % 8) + 0.0625 * k, anomaly=seq % 3 == 0 and k == 1, latency_us=700 + k)))
            health = dict(base, ts=batch_us + span, model_version=version, npu_fps=30.0 + seq % 5)
            health.update({c: 0.5 + i / 8 for i, c in enumerate(HEALTH_FLOATS)})
            health.update({c: i * 10 + seq for i, c in enumerate(HEALTH_INTS)})
            health["npu_utilisation"] = 0.25 + (seq % 4) / 8
            out["device_health"].append((site, line, health))
            if device == "press-2":  # labelled machine and sensor faults on one device
                out["sim_labels"].append((site, line, dict(
                    base, start_ts=batch_us, end_ts=batch_us + span, fault="imbalance" if seq % 2 else "sensor_stuck",
                    severity=(seq % 10) / 10, sensor=None if seq % 2 else "vibration")))
    return out


def write_tables(lake: Path, devs, samples_per_batch: int, interval_us: int, variant: str, n0: int) -> list:
    """Each table's rows, one file per partition sorted by (device, partition ts); returns the
    commit-log records, numbered from n0."""
    records = []
    n = n0
    uncommitted = variant == "health_uncommitted"
    for table, rows in table_rows(devs, samples_per_batch, interval_us).items():
        ts_col = TABLE_TS[table]
        if variant == "labels_bad_span" and table == "sim_labels":
            site, line, r = rows[len(rows) // 2]
            rows[len(rows) // 2] = (site, line, dict(r, end_ts=r["start_ts"] - 1))
        parts: dict = {}
        for site, line, r in rows:
            parts.setdefault(part_key((site, line, r[ts_col])), []).append(r)
        schema = pa.schema([pa.field(c, t, nullable=nul) for c, t, nul in TABLE_SCHEMAS[table]])
        if variant == "inference_ts_naive" and table == "inference":
            schema = schema.set(0, pa.field("ts", pa.timestamp("us"), nullable=False))
        for (site, line, date, hour), prows in sorted(parts.items()):
            prows.sort(key=lambda r: (r["device"], r[ts_col], r["boot_id"], r["seq"]))
            cols = {c: pa.array([r[c] for r in prows], pa.int64() if t == TS_UTC else t)
                    for c, t, _ in TABLE_SCHEMAS[table]}
            t = pa.table(cols).cast(schema)
            p = lake / table / f"site={site}" / f"line={line}" / f"date={date}" / f"hour={hour}" / \
                f"part-{INGEST_ID}-{n:08}.parquet"
            p.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, p, store_schema=False, compression="zstd",
                           use_dictionary=[c for c, ty, _ in TABLE_SCHEMAS[table] if ty == pa.string()])
            ts = [r[ts_col] for r in prows]
            if uncommitted and table == "device_health":
                uncommitted = False  # this file stays out of the commit log
            else:
                records.append({"v": 1, "n": n, "table": table, "path": p.relative_to(lake).as_posix(),
                                "rows": len(ts), "bytes": p.stat().st_size, "min_ts_us": min(ts), "max_ts_us": max(ts),
                                "committed_at_us": START_US + n})
            n += 1
    return records


def boot_id_for(site: str, line: str, device: str, boot: int) -> str:
    return hashlib.md5(f"{site}/{line}/{device}/{boot}".encode()).hexdigest()  # 32 lowercase hex


def devices(variant: str, batches: int):
    """[(site, line, device, boot_id, first_seq, n_batches, time offset in batches)]"""
    out = []
    half = max(1, batches // 2)
    for site, line in LINES.get(variant, LINES["good"]):
        for d, device in enumerate(DEVICE_NAMES):
            if device == "robot-1":  # rebooted: two boot ids, each starting again at seq 0
                out.append((site, line, device, boot_id_for(site, line, device, 0), 0, half, 0))
                out.append((site, line, device, boot_id_for(site, line, device, 1), 0, half, half))
            else:
                out.append((site, line, device, boot_id_for(site, line, device, 0), 17 * d, batches, 0))
    return out


def gen_rows(devs, samples_per_batch: int, interval_us: int):
    """All rows, device by device, in publishing order."""
    rows = []
    for site, line, device, boot_id, first_seq, n_batches, offset in devs:
        jitter = 10_000 * DEVICE_NAMES.index(device)  # devices publish slightly apart
        for b in range(n_batches):
            seq = first_seq + b
            batch_us = START_US + (b + offset) * interval_us + jitter
            for s in range(samples_per_batch):
                ts = batch_us + s * SAMPLE_STEP_US  # with the defaults, batch 2 straddles midnight
                for k, sensor in enumerate(SENSORS):
                    rows.append((site, line, ts, device, sensor, round(20.0 + k * 3.5 + 0.01 * seq + 0.001 * s, 6),
                                 (seq + s + k) % 3 if sensor == "current" else 0, boot_id, seq))
    return rows


_HOURS: dict = {}


def part_key(r) -> tuple:
    """(site, line, 'YYYY-MM-DD', 'HH') of the row's own UTC hour."""
    h = r[TS] // 3_600_000_000
    dh = _HOURS.get(h)
    if dh is None:
        t = EPOCH + dt.timedelta(hours=h)
        dh = _HOURS[h] = (t.strftime("%Y-%m-%d"), t.strftime("%H"))
    return (r[SITE], r[LINE]) + dh


def sort_key(r):
    return r[DEVICE], r[SENSOR], r[TS], r[BOOT], r[SEQ]


def write_file(path: Path, rows: list, schema: pa.Schema = SCHEMA, *, extra_cols=None,
               store_schema=False, dictionary=True) -> None:
    cols = list(zip(*rows))
    arrays = {name: pa.array(cols[i], SCHEMA.field(name).type if name != "ts" else pa.int64())
              for name, i in zip(SCHEMA.names, FILE_COL_IDX)}
    arrays["ts"] = arrays["ts"].cast(pa.timestamp("us", tz="UTC"))
    for name, idx in (extra_cols or {}).items():  # legacy: site/line stored in the file too
        arrays[name] = pa.array(cols[idx], pa.string())
    names = list(schema.names)
    table = pa.table({n: arrays[n] for n in names}).cast(schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    # store_schema=False: no ARROW:schema in the footer, as the Rust writer does
    pq.write_table(table, path, store_schema=store_schema, compression="zstd",
                   use_dictionary=[c for c in names if c in STRING_COLS or c in ("site", "line")] if dictionary else False)


def batches_for_rows(rows: int, samples_per_batch: int, variant: str = "good") -> int:
    per_batch = samples_per_batch * len(SENSORS)
    per_line_batches = 3  # press-1 + press-2 + (robot-1 boot 0 + boot 1) = 3 * batches
    return max(2, round(rows / (per_batch * per_line_batches * len(LINES.get(variant, LINES["good"])))))


def build(out_dir: str | os.PathLike, variant: str = "good", samples_per_batch: int = 5, batches: int = 8,
          interval_s: float = 600.0, files_per_partition: int = 2):
    """Write OUT/lake and OUT/summary.json; return (lake_path, summary_path).

    Default size: 3 lines x 4 device-boots x 8 batches x 5 samples x 4 sensors = 1440 rows.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    out = Path(out_dir)
    lake = out / "lake"
    tele = lake / "telemetry"
    devs = devices(variant, batches)
    rows = gen_rows(devs, samples_per_batch, int(interval_s * 1_000_000))

    # the device whose data gets damaged in the seq/dup variants, and its batch size in rows
    v_site, v_line, v_dev, v_boot, v_first, v_n, _ = devs[1]  # plant-a/01/press-2, seq 17..=24
    batch_rows = samples_per_batch * len(SENSORS)
    delta_rows = 0  # rows added(+)/removed(-) for the victim compared with the plain summary

    def victim(r, seq=None):
        return r[SITE] == v_site and r[LINE] == v_line and r[DEVICE] == v_dev and r[BOOT] == v_boot \
            and (seq is None or r[SEQ] == seq)

    if variant == "missing_seq":
        rows = [r for r in rows if not victim(r, v_first + 3)]
        delta_rows = -batch_rows
    elif variant == "extra_seq":
        last = [r for r in rows if victim(r, v_first + v_n - 1)]
        rows += [r[:TS] + (r[TS] + 1_000_000,) + r[TS + 1:SEQ] + (r[SEQ] + 1,) for r in last]
        delta_rows = batch_rows

    parts: dict[tuple, list] = {}
    for r in rows:
        parts.setdefault(part_key(r), []).append(r)
    files: list[Path] = []
    file_rows: dict[Path, list] = {}
    for (site, line, date, hour), prows in sorted(parts.items()):
        prows.sort(key=sort_key)
        k = max(1, min(files_per_partition, len(prows)))
        for i in range(k):  # consecutive slices, as a writer rolling by size would produce
            chunk = prows[len(prows) * i // k: len(prows) * (i + 1) // k]
            p = tele / f"site={site}" / f"line={line}" / f"date={date}" / f"hour={hour}" / f"part-{INGEST_ID}-{len(files):08}.parquet"
            files.append(p)
            file_rows[p] = chunk

    if variant == "duplicate_row":
        p = next(p for p in files if any(victim(r) for r in file_rows[p]))
        row = next(r for r in file_rows[p] if victim(r))
        file_rows[p] = sorted(file_rows[p] + [row], key=sort_key)
        delta_rows = 1
    elif variant == "duplicate_batch":
        batch = [r for p in files for r in file_rows[p] if victim(r, v_first + 1)]
        home = next(p for p in files if batch[0] in file_rows[p])
        p = home.with_name(f"part-{INGEST_ID}-{len(files):08}.parquet")
        files.append(p)
        file_rows[p] = sorted(batch, key=sort_key)
        delta_rows = len(batch)
    elif variant == "misplaced_file":
        old = next(p for p in files if any(victim(r) for r in file_rows[p]))
        other = next(s for s, ln in LINES["good"] if (s, ln) != (v_site, v_line) and ln == v_line)
        p = Path(str(old).replace(f"/site={v_site}/", f"/site={other}/"))
        assert p != old
        files[files.index(old)] = p
        file_rows[p] = file_rows.pop(old)
    elif variant == "hour_mismatch":
        p = files[len(files) // 2]
        file_rows[p] = [r[:TS] + (r[TS] + 3_600_000_000,) + r[TS + 1:] for r in file_rows[p]]

    mid = files[len(files) // 2]
    for p in files:
        schema, kw = SCHEMA, {}
        if variant == "wrong_type_quality" and p == mid:
            schema = schema.set(schema.get_field_index("quality"), pa.field("quality", pa.int32()))
        elif variant == "wrong_type_ts_ms" and p == mid:
            schema = schema.set(0, pa.field("ts", pa.timestamp("ms", tz="UTC")))
        elif variant == "wrong_type_ts_naive":
            schema = schema.set(0, pa.field("ts", pa.timestamp("us")))
        elif variant == "wrong_type_value":
            schema = schema.set(schema.get_field_index("value"), pa.field("value", pa.float32()))
        elif variant == "legacy_site_line":
            schema = pa.schema([SCHEMA.field("ts"), ("site", pa.string()), ("line", pa.string())] + list(SCHEMA)[1:])
            kw["extra_cols"] = {"site": SITE, "line": LINE}
        elif variant == "column_order" and p == mid:
            schema = pa.schema([SCHEMA.field(n) for n in ("ts", "device", "sensor", "value", "quality", "seq", "boot_id")])
        elif variant == "arrow_schema":
            kw["store_schema"] = True
        elif variant == "plain_strings":
            kw["dictionary"] = False
        write_file(p, file_rows[p], schema, **kw)

    # an in-flight temp file (must be ignored by readers) and the ingest's commit log (JSON lines)
    tmp = files[0].with_name(f".part-{INGEST_ID}-{len(files) + 99:08}.parquet.tmp")
    tmp.write_bytes(b"PAR1 half-written garbage")
    (lake / "_loopline" / "commits").mkdir(parents=True, exist_ok=True)
    tables = [] if variant == "telemetry_only" else \
        write_tables(lake, devs, samples_per_batch, int(interval_s * 1_000_000), variant, len(files))
    with open(lake / "_loopline" / "commits" / f"{INGEST_ID}.log", "w") as log:
        for n, p in enumerate(files):
            ts = [r[TS] for r in file_rows[p]]
            log.write(json.dumps({"v": 1, "n": n, "table": "telemetry", "path": p.relative_to(lake).as_posix(),
                                  "rows": len(ts), "bytes": p.stat().st_size, "min_ts_us": min(ts),
                                  "max_ts_us": max(ts), "committed_at_us": START_US + n}) + "\n")
        for record in tables:
            log.write(json.dumps(record) + "\n")

    summary_devices = []
    for site, line, device, boot_id, first_seq, n_batches, _ in devs:
        samples = n_batches * batch_rows
        if (site, line, device, boot_id) == (v_site, v_line, v_dev, v_boot):
            samples += delta_rows
        summary_devices.append({"site": site, "line": line, "device": device, "boot_id": boot_id,
                                "first_seq": first_seq, "last_seq": first_seq + n_batches - 1,
                                "batches": n_batches, "samples": samples})
    rows_committed = sum(d["samples"] for d in summary_devices)
    off = 1 if variant == "rows_mismatch" else 0
    summary = {
        "lake": str(lake.resolve()),
        "rows_committed": rows_committed + off,
        "files_committed": len(files) + (1 if variant == "files_mismatch" else 0),
        "samples_published": rows_committed + off,
        "devices": summary_devices,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return lake, summary_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--variant", default="good", choices=VARIANTS)
    ap.add_argument("--samples-per-batch", type=int, default=5)
    ap.add_argument("--batches", type=int, default=8, help="batches per device boot stream (default 8)")
    ap.add_argument("--rows", type=int, help="aim for about this many rows (sets --batches)")
    ap.add_argument("--interval-s", type=float, default=600.0, help="seconds between a device's batches")
    ap.add_argument("--files-per-partition", type=int, default=2)
    a = ap.parse_args()
    batches = batches_for_rows(a.rows, a.samples_per_batch, a.variant) if a.rows else a.batches
    lake, summary = build(a.out_dir, a.variant, a.samples_per_batch, batches, a.interval_s, a.files_per_partition)
    s = json.loads(summary.read_text())
    print(f"lake: {lake}\nsummary: {summary}\nrows: {s['rows_committed']}  files: {s['files_committed']}")


if __name__ == "__main__":
    main()
