"""The lake checker must pass a good lake and fail each kind of broken one, in every reader.

Run: .venv/bin/python -m pytest -q tests/interop
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import check_lake
import synth_lake

HERE = Path(__file__).resolve().parent
READER_LABELS = ("pyarrow.dataset", "duckdb", "polars")


@pytest.fixture(scope="session")
def lakes(tmp_path_factory):
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = synth_lake.build(tmp_path_factory.mktemp(variant), variant)
        return cache[variant]
    return get


def run_check(lakes, variant, capsys, *extra):
    lake, summary = lakes(variant)
    rc = check_lake.main(["--lake", str(lake), "--summary", str(summary), *extra])
    return rc, capsys.readouterr().out


def fail_lines(out, who):
    return [ln for ln in out.splitlines() if ln.startswith(f"FAIL {who}:")]


def test_good_lake_passes(lakes, capsys):
    rc, out = run_check(lakes, "good", capsys)
    assert rc == 0, out
    assert "check_lake: OK" in out
    assert "FAIL" not in out
    for who in READER_LABELS:  # every reader ran and saw every row and file
        row = next(ln for ln in out.splitlines() if ln.startswith(who + " "))
        assert row.split()[2:4] == ["960", "8"], row
    assert "in-flight .*.tmp" in out  # the .tmp file is seen on disk but read by nobody


def test_numeric_ids_pass_and_default_options_are_flagged(lakes, capsys):
    rc, out = run_check(lakes, "good_numeric_ids", capsys)
    assert rc == 0, out
    # with default inference, pyarrow cannot merge site (int32 from the path vs string in the file)
    assert "warn pyarrow.dataset: default options: ds.dataset" in out
    assert "string vs int32" in out
    # and DuckDB autocasts site=1 to BIGINT, overriding the in-file VARCHAR
    assert "'site': 'BIGINT'" in out


# variant -> text every failing reader line must contain (reader-level defects)
READER_DEFECTS = {
    "missing_seq": "missing seq 20",
    "extra_seq": "unexpected seq 25",
    "duplicate_row": "1 duplicate row(s)",
    "duplicate_batch": "20 duplicate row(s)",
    "wrong_type_quality": "quality",
    "wrong_type_ts_ms": "ts",
    "wrong_type_ts_naive": "column ts",
    "wrong_type_value": "column value",
    "hive_mismatch": "file holds [('site-2', 'line-1')]",
    "rows_mismatch": "960 rows, summary rows_committed=961",
}


@pytest.mark.parametrize("variant", sorted(READER_DEFECTS))
def test_each_reader_catches(lakes, capsys, variant):
    rc, out = run_check(lakes, variant, capsys)
    assert rc == 1, out
    assert "check_lake: FAIL" in out
    for who in READER_LABELS:
        lines = fail_lines(out, who)
        assert lines, f"{who} did not flag {variant}:\n{out}"
        assert any(READER_DEFECTS[variant] in ln for ln in lines), f"{who}:\n" + "\n".join(lines)


def test_files_committed_mismatch(lakes, capsys):
    rc, out = run_check(lakes, "files_mismatch", capsys)
    assert rc == 1
    assert fail_lines(out, "filesystem") == [
        "FAIL filesystem: 8 *.parquet files on disk under telemetry/, summary files_committed=9"]


def test_hive_mismatch_shows_path_value_wins(lakes, capsys):
    # every reader silently exposes the path value; only the hive-off read sees the file's value
    rc, out = run_check(lakes, "hive_mismatch", capsys)
    assert rc == 1
    for who in READER_LABELS:
        assert any("reader exposes [('site-1', 'line-1')]" in ln for ln in fail_lines(out, who)), out


def test_usage_errors(tmp_path, capsys):
    assert check_lake.main(["--lake", str(tmp_path / "nope"), "--summary", str(tmp_path / "s.json")]) == 2
    lake, _ = synth_lake.build(tmp_path, "good")
    (tmp_path / "bad.json").write_text("{not json")
    assert check_lake.main(["--lake", str(lake), "--summary", str(tmp_path / "bad.json")]) == 2


def test_cli_exit_status(lakes):
    lake, summary = lakes("missing_seq")
    p = subprocess.run([sys.executable, str(HERE / "check_lake.py"), "--lake", str(lake), "--summary", str(summary),
                        "--readers", "duckdb"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "missing seq 20" in p.stdout
