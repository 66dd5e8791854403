#!/usr/bin/env python3
"""Build small synthetic Loopline lakes (plus a matching demo summary) for the interop checks.

Layout and types follow the lake contract exactly:

    <lake>/telemetry/site=<s>/line=<l>/date=<YYYY-MM-DD>/hour=<HH>/part-<ingest-id>-<n>.parquet
    <lake>/_loopline/commits/<ingest-id>.log

File columns, in order: ts TIMESTAMP(MICROS, isAdjustedToUTC=true), site, line, device, sensor
(strings, dictionary-encoded, no embedded Arrow schema), value float64, quality int16,
boot_id (32 hex chars), seq int64.

Variants (``VARIANTS``) are the good lake or one deliberate defect; where it makes sense the
summary is adjusted so that *only* the intended check trips.

CLI:  python tests/interop/synth_lake.py OUT_DIR [--variant NAME]
      -> OUT_DIR/lake/... and OUT_DIR/summary.json
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

SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", tz="UTC")),
    ("site", pa.string()),
    ("line", pa.string()),
    ("device", pa.string()),
    ("sensor", pa.string()),
    ("value", pa.float64()),
    ("quality", pa.int16()),
    ("boot_id", pa.string()),
    ("seq", pa.int64()),
])
STRING_COLS = ["site", "line", "device", "sensor", "boot_id"]
SENSORS = ("temp", "pressure", "vibration", "current")

VARIANTS = (
    "good",                 # passes; includes a .tmp file and the _loopline folder
    "good_numeric_ids",     # passes; site/line ids look like numbers ("1", "01"): reader type inference
    "missing_seq",          # one batch missing in the middle of a device's seq range
    "extra_seq",            # one batch beyond the summary's last_seq
    "duplicate_row",        # one row written twice in the same file
    "duplicate_batch",      # one whole batch written again in another file (replayed write)
    "wrong_type_quality",   # one file has quality as int32
    "wrong_type_ts_ms",     # one file has ts in milliseconds
    "wrong_type_ts_naive",  # every file has ts with isAdjustedToUTC=false
    "wrong_type_value",     # every file has value as float32
    "hive_mismatch",        # one file sits under site=A but holds site=B rows
    "files_mismatch",       # summary files_committed off by one
    "rows_mismatch",        # summary rows_committed off by one
)


def boot_id_for(device: str, boot: int) -> str:
    return hashlib.md5(f"{device}/{boot}".encode()).hexdigest()  # 32 lowercase hex chars


def _devices(numeric_ids: bool):
    """(site, line, device, boot_id, first_seq, n_batches) for two sites/lines, several devices."""
    lines = [("1", "01"), ("2", "02")] if numeric_ids else [("site-1", "line-1"), ("site-2", "line-2")]
    out = []
    for si, (site, line) in enumerate(lines):
        for d in range(3):
            device = f"dev-{si + 1}-{d + 1}"
            if d == 2:
                # a device that rebooted: two boot ids, each starting again at seq 0
                out.append((site, line, device, boot_id_for(device, 0), 0, 4))
                out.append((site, line, device, boot_id_for(device, 1), 0, 4))
            else:
                out.append((site, line, device, boot_id_for(device, 0), 17 * d, 8))
    return out


def _rows(numeric_ids: bool, samples_per_batch: int):
    """Yield (partition key, row dict) in timestamp order per device."""
    start = dt.datetime(2024, 3, 10, 23, 40, tzinfo=UTC)  # two hours across a date boundary
    for site, line, device, boot_id, first_seq, n_batches in _devices(numeric_ids):
        offset = 0 if boot_id == boot_id_for(device, 0) else 4
        for b in range(n_batches):
            seq = first_seq + b
            batch_ts = start + dt.timedelta(minutes=10 * (b + offset), milliseconds=137 * len(device))
            for s in range(samples_per_batch):
                ts = batch_ts + dt.timedelta(milliseconds=100 * s)
                for k, sensor in enumerate(SENSORS):
                    yield (site, line, batch_ts.strftime("%Y-%m-%d"), batch_ts.strftime("%H")), {
                        "ts": ts, "site": site, "line": line, "device": device, "sensor": sensor,
                        "value": round(20.0 + k * 3.5 + 0.01 * seq + 0.001 * s, 6),
                        "quality": (seq + s + k) % 3 if sensor == "current" else 0,
                        "boot_id": boot_id, "seq": seq,
                    }


def _write(path: Path, rows: list[dict], schema: pa.Schema = SCHEMA) -> None:
    cols = {name: [r[name] for r in rows] for name in schema.names}
    table = pa.table({n: pa.array(cols[n], SCHEMA.field(n).type) for n in schema.names})
    table = table.cast(schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    # store_schema=False: no ARROW:schema in the footer, like the Rust writer is specified to do
    pq.write_table(table, path, store_schema=False, use_dictionary=STRING_COLS,
                   compression="zstd")


def build(out_dir: str | os.PathLike, variant: str = "good", samples_per_batch: int = 5):
    """Write OUT/lake and OUT/summary.json; return (lake_path, summary_path)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    out = Path(out_dir)
    lake = out / "lake"
    tele = lake / "telemetry"
    numeric = variant == "good_numeric_ids"

    parts: dict[tuple, list[dict]] = {}
    for key, row in _rows(numeric, samples_per_batch):
        parts.setdefault(key, []).append(row)

    # the device whose data gets damaged in the seq/dup variants, and its batch size in rows
    victim = _devices(numeric)[1]  # (site, line, device, boot_id, first_seq, n_batches)
    v_site, v_line, v_dev, v_boot, v_first, v_n = victim
    batch_rows = samples_per_batch * len(SENSORS)
    delta_rows = 0  # rows added(+)/removed(-) compared with the plain summary, per the victim

    if variant == "missing_seq":
        gone = v_first + 3
        for key in parts:
            parts[key] = [r for r in parts[key]
                          if not (r["device"] == v_dev and r["boot_id"] == v_boot and r["seq"] == gone)]
        delta_rows = -batch_rows
    elif variant == "extra_seq":
        last = [r for rows in parts.values() for r in rows
                if r["device"] == v_dev and r["boot_id"] == v_boot and r["seq"] == v_first + v_n - 1]
        extra = [dict(r, seq=r["seq"] + 1, ts=r["ts"] + dt.timedelta(seconds=1)) for r in last]
        key = (v_site, v_line, extra[0]["ts"].strftime("%Y-%m-%d"), extra[0]["ts"].strftime("%H"))
        parts[key].extend(extra)
        delta_rows = batch_rows

    files: list[Path] = []
    file_rows: dict[Path, list[dict]] = {}
    for (site, line, date, hour), rows in sorted(parts.items()):
        rows.sort(key=lambda r: (r["ts"], r["device"], r["sensor"]))
        half = len(rows) // 2  # two files per partition
        for n, chunk in enumerate((rows[:half], rows[half:])):
            p = tele / f"site={site}" / f"line={line}" / f"date={date}" / f"hour={hour}" / f"part-{INGEST_ID}-{len(files)}.parquet"
            files.append(p)
            file_rows[p] = chunk

    if variant == "duplicate_row":
        p = next(p for p in files if any(r["device"] == v_dev for r in file_rows[p]))
        row = next(r for r in file_rows[p] if r["device"] == v_dev)
        file_rows[p] = file_rows[p] + [dict(row)]
        delta_rows = 1
    elif variant == "duplicate_batch":
        batch = [r for p in files for r in file_rows[p]
                 if r["device"] == v_dev and r["boot_id"] == v_boot and r["seq"] == v_first + 1]
        first_file = next(p for p in files if batch[0] in file_rows[p])
        p = first_file.with_name(f"part-{INGEST_ID}-{len(files)}.parquet")
        files.append(p)
        file_rows[p] = [dict(r) for r in batch]
        delta_rows = len(batch)
    elif variant == "hive_mismatch":
        p = files[0]  # lives under site=site-1 ...
        file_rows[p] = [dict(r, site="site-2") for r in file_rows[p]]  # ... but says site-2 inside

    for p in files:
        schema = SCHEMA
        if variant == "wrong_type_quality" and p == files[len(files) // 2]:
            schema = schema.set(schema.get_field_index("quality"), pa.field("quality", pa.int32()))
        elif variant == "wrong_type_ts_ms" and p == files[len(files) // 2]:
            schema = schema.set(0, pa.field("ts", pa.timestamp("ms", tz="UTC")))
        elif variant == "wrong_type_ts_naive":
            schema = schema.set(0, pa.field("ts", pa.timestamp("us")))
        elif variant == "wrong_type_value":
            schema = schema.set(schema.get_field_index("value"), pa.field("value", pa.float32()))
        _write(p, file_rows[p], schema)

    # in-flight temp file (must be ignored by readers) and the ingest's commit log folder
    tmp = files[0].with_name(f".part-{INGEST_ID}-999.parquet.tmp")
    tmp.write_bytes(b"PAR1 half-written garbage")
    (lake / "_loopline" / "commits").mkdir(parents=True, exist_ok=True)
    (lake / "_loopline" / "commits" / f"{INGEST_ID}.log").write_text(
        "".join(f"{p.relative_to(lake)}\n" for p in files))

    devices = []
    for site, line, device, boot_id, first_seq, n_batches in _devices(numeric):
        samples = n_batches * batch_rows
        if (device, boot_id) == (v_dev, v_boot):
            samples += delta_rows
        devices.append({"site": site, "line": line, "device": device, "boot_id": boot_id,
                        "first_seq": first_seq, "last_seq": first_seq + n_batches - 1,
                        "batches": n_batches, "samples": samples})
    rows_committed = sum(d["samples"] for d in devices)
    summary = {
        "lake": str(lake.resolve()),
        "rows_committed": rows_committed + (1 if variant == "rows_mismatch" else 0),
        "files_committed": len(files) + (1 if variant == "files_mismatch" else 0),
        "samples_published": rows_committed + (1 if variant == "rows_mismatch" else 0),
        "devices": devices,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return lake, summary_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--variant", default="good", choices=VARIANTS)
    ap.add_argument("--samples-per-batch", type=int, default=5)
    a = ap.parse_args()
    lake, summary = build(a.out_dir, a.variant, a.samples_per_batch)
    print(f"lake: {lake}\nsummary: {summary}")


if __name__ == "__main__":
    main()
