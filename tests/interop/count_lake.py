#!/usr/bin/env python3
"""Counts a Loopline lake with three independent readers, for the end-to-end tests.

    .venv/bin/python tests/interop/count_lake.py --lake DIR

Prints one JSON object: for each reader (pyarrow, duckdb, polars), the telemetry table's row
count, its distinct (site, line, device, boot_id, seq, sensor, ts) keys, its distinct
(site, line, device, boot_id, seq) messages, and the quarantine table's rows per reason.
Each reader reads the Hive-partitioned folders the way a user would, with no Loopline code.
Exit status 0 when all three agree, 1 when they differ (the JSON still says how).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import duckdb
import polars as pl
import pyarrow.dataset as ds

KEY = ["site", "line", "device", "boot_id", "seq", "sensor", "ts"]
MESSAGE = ["site", "line", "device", "boot_id", "seq"]


def has_files(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(f.endswith(".parquet") for f in files):
            return True
    return False


def with_pyarrow(lake: str) -> dict:
    out = {"rows": 0, "keys": 0, "messages": 0, "quarantine": {}}
    tele = os.path.join(lake, "telemetry")
    if has_files(tele):
        table = ds.dataset(tele, format="parquet", partitioning="hive").to_table()
        out["rows"] = table.num_rows
        df = pl.from_arrow(table)  # only to count distinct tuples; the read was pyarrow's
        out["keys"] = df.select(KEY).unique().height
        out["messages"] = df.select(MESSAGE).unique().height
    quarantine = os.path.join(lake, "quarantine")
    if has_files(quarantine):
        table = ds.dataset(quarantine, format="parquet", partitioning="hive").to_table()
        for reason in table.column("reason").to_pylist():
            out["quarantine"][reason] = out["quarantine"].get(reason, 0) + 1
    return out


def with_duckdb(lake: str) -> dict:
    out = {"rows": 0, "keys": 0, "messages": 0, "quarantine": {}}
    con = duckdb.connect()
    tele = os.path.join(lake, "telemetry")
    if has_files(tele):
        src = f"read_parquet('{tele}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
        out["rows"] = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
        cols = ", ".join(KEY)
        out["keys"] = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM {src})").fetchone()[0]
        cols = ", ".join(MESSAGE)
        out["messages"] = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM {src})").fetchone()[0]
    quarantine = os.path.join(lake, "quarantine")
    if has_files(quarantine):
        src = f"read_parquet('{quarantine}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
        for reason, n in con.execute(f"SELECT reason, count(*) FROM {src} GROUP BY reason").fetchall():
            out["quarantine"][reason] = n
    return out


def with_polars(lake: str) -> dict:
    out = {"rows": 0, "keys": 0, "messages": 0, "quarantine": {}}
    tele = os.path.join(lake, "telemetry")
    if has_files(tele):
        lf = pl.scan_parquet(f"{tele}/**/*.parquet", hive_partitioning=True)
        out["rows"] = lf.select(pl.len()).collect().item()
        out["keys"] = lf.select(KEY).unique().select(pl.len()).collect().item()
        out["messages"] = lf.select(MESSAGE).unique().select(pl.len()).collect().item()
    quarantine = os.path.join(lake, "quarantine")
    if has_files(quarantine):
        lf = pl.scan_parquet(f"{quarantine}/**/*.parquet", hive_partitioning=True)
        for reason, n in lf.group_by("reason").len().collect().iter_rows():
            out["quarantine"][reason] = n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    args = parser.parse_args()
    if not os.path.isdir(args.lake):
        print(f"count_lake: no lake at {args.lake}", file=sys.stderr)
        return 2
    counts = {
        "pyarrow": with_pyarrow(args.lake),
        "duckdb": with_duckdb(args.lake),
        "polars": with_polars(args.lake),
    }
    print(json.dumps(counts, sort_keys=True))
    first = counts["pyarrow"]
    return 0 if all(c == first for c in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
