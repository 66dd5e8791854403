#!/usr/bin/env python3
"""Reads one table of a Loopline lake whose files were written before and after a nullable
column was added, with each reader's way of unifying schemas, for the end-to-end tests.

    .venv/bin/python tests/interop/read_evolved.py --lake DIR --table T --column C

Prints JSON: for pyarrow (a dataset over the files with their schemas unified), DuckDB
(`read_parquet(..., union_by_name = true)`) and Polars (`scan_parquet(...,
missing_columns="insert")`): the rows read, how many of them have C null, and whether C is in
the schema read. Exit status 0 when all three agree, 1 otherwise.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--column", required=True)
    args = parser.parse_args()
    folder = os.path.join(args.lake, args.table)
    files = sorted(glob.glob(f"{folder}/**/*.parquet", recursive=True))
    if not files:
        print(f"read_evolved: no files under {folder}", file=sys.stderr)
        return 2
    col = args.column

    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    table = ds.dataset(files, format="parquet", schema=schema).to_table()
    by_pyarrow = {"rows": table.num_rows, "nulls": table.column(col).null_count, "has_column": col in table.schema.names}

    con = duckdb.connect()
    src = f"read_parquet('{folder}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
    rows, nulls = con.execute(f"SELECT count(*), count(*) - count({col}) FROM {src}").fetchone()
    names = [d[0] for d in con.execute(f"SELECT * FROM {src} LIMIT 0").description]
    by_duckdb = {"rows": rows, "nulls": nulls, "has_column": col in names}

    lf = pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True, missing_columns="insert")
    df = lf.select(pl.len().alias("rows"), pl.col(col).null_count().alias("nulls")).collect()
    by_polars = {"rows": df["rows"][0], "nulls": df["nulls"][0], "has_column": col in lf.collect_schema().names()}

    out = {"pyarrow": by_pyarrow, "duckdb": by_duckdb, "polars": by_polars}
    print(json.dumps(out, sort_keys=True))
    return 0 if by_pyarrow == by_duckdb == by_polars else 1


if __name__ == "__main__":
    sys.exit(main())
