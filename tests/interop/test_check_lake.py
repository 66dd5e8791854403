"""The lake checker must pass a good lake and fail each kind of broken one, in every reader.

Run: .venv/bin/python -m pytest -q tests/interop
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import check_lake
import synth_lake

HERE = Path(__file__).resolve().parent
READER_LABELS = ("pyarrow.dataset", "duckdb", "polars")
DEFAULT_LABELS = ("pq.read_table", "ds.dataset/hive", "duckdb/defaults", "polars/defaults")
GOOD_ROWS, GOOD_FILES = "1440", "12"  # 3 lines x 4 device boots x 8 batches x 5 samples x 4 sensors


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


def lines(out, kind, who):
    return [ln for ln in out.splitlines() if ln.startswith(f"{kind} {who}:")]


def table_row(out, who):
    return next(ln for ln in out.splitlines() if ln.startswith(who + " ")).split()


def test_good_lake_passes(lakes, capsys):
    rc, out = run_check(lakes, "good", capsys)
    assert rc == 0, out
    assert "check_lake: OK" in out
    assert "FAIL" not in out
    for who in READER_LABELS:  # every reader ran and saw every row and file
        assert table_row(out, who)[2:4] == [GOOD_ROWS, GOOD_FILES], out
    for who in DEFAULT_LABELS:  # the plain default-options reads work and see every row
        assert table_row(out, who)[2] == GOOD_ROWS, out
    assert "in-flight .*.tmp" in out  # the .tmp file is seen on disk but read by nobody


def test_good_lake_layout(tmp_path):
    """The synthetic lake is what the contract says: hive keys in the path only, 7 typed columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake, _ = synth_lake.build(tmp_path, "good")
    files = sorted((lake / "telemetry").rglob("*.parquet"))
    assert any("/line=01/" in str(p) for p in files)
    md = pq.read_metadata(files[0])
    assert md.metadata is None or b"ARROW:schema" not in md.metadata
    assert pq.read_schema(files[0]) == pa.schema([pa.field(n, t, nullable=False) for n, t in [
        ("ts", pa.timestamp("us", tz="UTC")), ("device", pa.string()), ("sensor", pa.string()),
        ("value", pa.float64()), ("quality", pa.int16()), ("boot_id", pa.string()), ("seq", pa.int64())]])
    assert all(p.name.startswith(f"part-{synth_lake.INGEST_ID}-") and len(p.stem.rsplit("-", 1)[1]) == 8 for p in files)
    # every line has the same device names: per-device checks must key by (site, line, device)
    devs = json.loads((lake.parent / "summary.json").read_text())["devices"]
    assert len({d["device"] for d in devs}) < len({(d["site"], d["line"], d["device"]) for d in devs})


def test_default_reads_of_numeric_looking_lines_are_reported_not_failed(lakes, capsys):
    rc, out = run_check(lakes, "good", capsys)
    assert rc == 0, out
    # line=01: pyarrow and polars infer an integer by default and read 1; reported as warnings
    for who, typ in (("ds.dataset/hive", "int32"), ("polars/defaults", "Int64"),
                     ("pq.read_table", "dictionary<values=int32")):
        w = lines(out, "warn", who)
        assert any(f"line is typed {typ}" in ln for ln in w), out
        assert any("read as ('plant-a', 1)" in ln and "('plant-a', '01')" in ln for ln in w), out
    # DuckDB's autocast keeps '01' a string (a leading zero does not round-trip)
    assert not lines(out, "warn", "duckdb/defaults"), out


def test_explicit_partition_types_are_what_make_line_01_work(lakes, capsys, monkeypatch):
    # the same pyarrow.dataset checks with the default inference instead of the explicit schema
    monkeypatch.setattr(check_lake, "pa_explicit_partitioning", lambda: "hive")
    rc, out = run_check(lakes, "good", capsys, "--readers", "pyarrow", "--no-defaults")
    assert rc == 1, out
    fails = lines(out, "FAIL", "pyarrow.dataset")
    assert "FAIL pyarrow.dataset: column line: int32 (expected string)" in fails, out
    assert any("reader exposes (site, line, date, hour) [('plant-a', 1, " in ln for ln in fails), out


def test_numeric_ids_pass_and_default_options_are_flagged(lakes, capsys):
    rc, out = run_check(lakes, "good_numeric_ids", capsys)
    assert rc == 0, out
    # lines '01' and '1' of site '1' become the same integer 1 in pyarrow and polars by default
    for who in ("pq.read_table", "ds.dataset/hive", "polars/defaults"):
        assert any("3 distinct (site, line) pairs collapse into 2" in ln for ln in lines(out, "warn", who)), out
    # DuckDB autocasts site=1/2 to BIGINT (lossless), line stays VARCHAR ('01' next to '1')
    assert lines(out, "warn", "duckdb/defaults") == ["warn duckdb/defaults: site is typed BIGINT, not a string, by default"]


# variant -> text one FAIL line of every reader must contain
READER_DEFECTS = {
    "missing_seq": "device plant-a/01/press-2 boot e4bed6ce..: distinct seq != 17..=24 (7 distinct, min 17, max 24); missing seq 20",
    "extra_seq": "unexpected seq 25",
    "duplicate_row": "1 duplicate row(s) on (site, line, device, boot_id, seq, sensor, ts)",
    "duplicate_batch": "20 duplicate row(s)",
    "misplaced_file": "device plant-b/01/press-1 boot a6b74a64..: 52 rows in the lake, not in the summary",
    "wrong_type_quality": "column quality is",
    "wrong_type_ts_ms": "column ts is",
    "wrong_type_ts_naive": "column ts is",
    "wrong_type_value": "column value is",
    "legacy_site_line": "columns ['ts', 'site', 'line', 'device', 'sensor', 'value', 'quality', 'boot_id', 'seq'] "
                        "(expected exactly ['ts', 'device', 'sensor', 'value', 'quality', 'boot_id', 'seq']) in 12 of 12",
    "column_order": "columns ['ts', 'device', 'sensor', 'value', 'quality', 'seq', 'boot_id'] (expected exactly",
    "arrow_schema": "an embedded ARROW:schema (the contract says none) in 12 of 12 file(s)",
    "hour_mismatch": "outside its date/hour partition 2024-03-11/00",
    "rows_mismatch": "1440 rows, summary rows_committed=1441",
}


@pytest.mark.parametrize("variant", sorted(READER_DEFECTS))
def test_each_reader_catches(lakes, capsys, variant):
    rc, out = run_check(lakes, variant, capsys)
    assert rc == 1, out
    assert "check_lake: FAIL" in out
    for who in READER_LABELS:
        fails = lines(out, "FAIL", who)
        assert fails, f"{who} did not flag {variant}:\n{out}"
        assert any(READER_DEFECTS[variant] in ln for ln in fails), f"{who}:\n" + "\n".join(fails)


def test_misplaced_file_keys_devices_by_site_and_line(lakes, capsys):
    rc, out = run_check(lakes, "misplaced_file", capsys, "--readers", "duckdb", "--no-defaults")
    assert rc == 1
    fails = lines(out, "FAIL", "duckdb")
    # the same device name exists under plant-b/01: its own rows there are still fine
    own = f"device plant-b/01/press-1 boot {synth_lake.boot_id_for('plant-b', '01', 'press-1', 0)[:8]}.."
    assert not any(own in ln for ln in fails), fails
    assert any(ln.endswith("device plant-a/01/press-1 boot a6b74a64..: 108 rows, summary samples=160") for ln in fails), fails


def test_legacy_layout_breaks_pq_read_table(lakes, capsys):
    # the earlier layout (site/line in the files too): pq.read_table(<dir>) cannot merge them
    rc, out = run_check(lakes, "legacy_site_line", capsys)
    assert rc == 1
    assert any("Unable to merge: Field site has incompatible types" in ln for ln in lines(out, "FAIL", "pq.read_table")), out


def test_plain_strings_caught_where_encodings_are_visible(lakes, capsys):
    rc, out = run_check(lakes, "plain_strings", capsys)
    assert rc == 1
    for who in ("pyarrow.dataset", "duckdb"):  # polars has no API for column encodings
        assert any("column device not dictionary-encoded" in ln for ln in lines(out, "FAIL", who)), out


def test_polars_fails_on_mixed_file_types_but_still_reports_the_file(lakes, capsys):
    rc, out = run_check(lakes, "wrong_type_quality", capsys, "--readers", "polars", "--no-defaults")
    assert rc == 1
    fails = lines(out, "FAIL", "polars")
    assert any("reader error: SchemaError" in ln for ln in fails), fails
    assert any("column quality is Int32 (expected int16) in 1 of 12 file(s)" in ln for ln in fails), fails


def test_files_committed_mismatch(lakes, capsys):
    rc, out = run_check(lakes, "files_mismatch", capsys)
    assert rc == 1
    assert lines(out, "FAIL", "filesystem") == [
        "FAIL filesystem: 12 *.parquet files on disk under telemetry/, summary files_committed=13"]
    assert not [ln for ln in out.splitlines() if ln.startswith("FAIL") and not ln.startswith("FAIL filesystem")]


def test_summary_entries_must_carry_site_and_line(lakes, capsys, tmp_path):
    lake, summary = lakes("good")
    s = json.loads(Path(summary).read_text())
    for d in s["devices"]:
        del d["site"], d["line"]
    (tmp_path / "s.json").write_text(json.dumps(s))
    rc = check_lake.main(["--lake", str(lake), "--summary", str(tmp_path / "s.json"), "--readers", "duckdb"])
    out = capsys.readouterr().out
    assert rc == 1
    assert any("lacks or mistypes one of" in ln for ln in lines(out, "FAIL", "filesystem")), out
    assert any("not in the summary" in ln for ln in lines(out, "FAIL", "duckdb")), out


def test_summary_device_without_batches(lakes, capsys, tmp_path):
    # the demo writes first_seq/last_seq = null for a device the broker acknowledged nothing of
    lake, summary = lakes("good")
    s = json.loads(Path(summary).read_text())
    idle = {"site": "plant-b", "line": "01", "device": "idle-1", "boot_id": "0" * 32, "batches": 0,
            "first_seq": None, "last_seq": None, "samples": 0, "rows_in_lake": 0, "complete": True}
    s["devices"].append(idle)
    (tmp_path / "s.json").write_text(json.dumps(s))
    args = ["--lake", str(lake), "--summary", str(tmp_path / "s.json"), "--readers", "duckdb", "--no-defaults"]
    assert check_lake.main(args) == 0, capsys.readouterr().out
    capsys.readouterr()
    # ... but a device with rows in the lake must not claim to have none
    s["devices"] = [dict(d, first_seq=None, last_seq=None, batches=0, samples=0) if d["device"] == "press-1"
                    and (d["site"], d["line"]) == ("plant-b", "01") else d for d in s["devices"]]
    s["rows_committed"] = s["samples_published"] = sum(d["samples"] for d in s["devices"])
    (tmp_path / "s.json").write_text(json.dumps(s))
    assert check_lake.main(args) == 1
    out = capsys.readouterr().out
    assert any("device plant-b/01/press-1" in ln and "summary has no batch of it" in ln
               for ln in lines(out, "FAIL", "duckdb")), out


def test_bad_site_name_in_path(lakes, capsys, tmp_path):
    lake, summary = lakes("good")
    shutil.copytree(lake, tmp_path / "lake")
    (tmp_path / "lake/telemetry/site=plant-b").rename(tmp_path / "lake/telemetry/site=plant b")
    rc = check_lake.main(["--lake", str(tmp_path / "lake"), "--summary", str(summary), "--readers", "duckdb",
                          "--no-defaults"])
    out = capsys.readouterr().out
    assert rc == 1
    assert any("site value 'plant b' is not 1-64 of [A-Za-z0-9_.-]" in ln for ln in lines(out, "FAIL", "filesystem")), out


def test_usage_errors(tmp_path, capsys):
    assert check_lake.main(["--lake", str(tmp_path / "nope"), "--summary", str(tmp_path / "s.json")]) == 2
    lake, _ = synth_lake.build(tmp_path, "good")
    (tmp_path / "bad.json").write_text("{not json")
    assert check_lake.main(["--lake", str(lake), "--summary", str(tmp_path / "bad.json")]) == 2
    assert check_lake.main(["--lake", str(lake), "--summary", str(tmp_path / "summary.json"), "--readers", "spark"]) == 2


def test_cli_exit_status(lakes):
    lake, summary = lakes("missing_seq")
    p = subprocess.run([sys.executable, str(HERE / "check_lake.py"), "--lake", str(lake), "--summary", str(summary),
                        "--readers", "duckdb"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "missing seq 20" in p.stdout
    assert "duckdb/defaults" in p.stdout and "pq.read_table" not in p.stdout


# ------------------------------------------------------------- inference, device_health, sim_labels
TABLE_ROWS = {"inference": "144", "device_health": "72", "sim_labels": "24"}  # 2, 1 and press-2's 1 per batch


def test_good_lake_checks_every_table_in_every_reader(lakes, capsys):
    rc, out = run_check(lakes, "good", capsys, "--no-defaults")
    assert rc == 0, out
    assert "tables inference, device_health, sim_labels checked too" in out
    for table, rows in TABLE_ROWS.items():
        assert table_row(out, f"{table}/files")[2:4] == [rows, "6"], out
        for who in READER_LABELS:
            row = table_row(out, f"{table}/{who}")
            assert row[2:4] == [rows, "6"] and row[-1] == "OK", out


def test_a_lake_without_the_other_tables_passes(lakes, capsys):
    rc, out = run_check(lakes, "telemetry_only", capsys, "--no-defaults")
    assert rc == 0, out
    assert not any(ln.startswith(tuple(TABLE_ROWS)) for ln in out.splitlines()), out
    assert "checked too" not in out


@pytest.mark.parametrize("variant, who, text", [
    ("inference_ts_naive", "inference/files", "column ts is timestamp[us,naive] (expected timestamp[us,UTC]) in 6 of 6"),
    ("inference_ts_naive", "inference/pyarrow.dataset", "column ts: timestamp[us] (expected timestamp[us,UTC])"),
    ("inference_ts_naive", "inference/duckdb", "column ts: TIMESTAMP (expected timestamp[us,UTC])"),
    ("inference_ts_naive", "inference/polars", "column ts: Datetime(time_unit='us', time_zone=None)"),
    ("health_uncommitted", "device_health/files", "is on disk but in no commit log"),
    ("labels_bad_span", "sim_labels/duckdb", "1 row(s) with end_ts not after start_ts"),
])
def test_table_defects_are_caught(lakes, capsys, variant, who, text):
    rc, out = run_check(lakes, variant, capsys, "--no-defaults")
    assert rc == 1, out
    fails = lines(out, "FAIL", who)
    assert any(text in ln for ln in fails), out
    # the telemetry checks are untouched by a defect in another table
    assert not lines(out, "FAIL", "duckdb") and not lines(out, "FAIL", "filesystem"), out


def test_table_rows_must_belong_to_summarised_device_boots(lakes, capsys, tmp_path):
    lake, summary = lakes("good")
    s = json.loads(Path(summary).read_text())
    # the summary forgets one device boot's last batch: its inference rows now reach past last_seq
    d = next(d for d in s["devices"] if (d["site"], d["line"], d["device"]) == ("plant-b", "01", "press-1"))
    d["last_seq"] -= 1
    (tmp_path / "s.json").write_text(json.dumps(s))
    rc = check_lake.main(["--lake", str(lake), "--summary", str(tmp_path / "s.json"), "--readers", "duckdb",
                          "--no-defaults"])
    out = capsys.readouterr().out
    assert rc == 1
    assert any("device plant-b/01/press-1" in ln and "inference seq 0..=7 outside the summary's 0..=6" in ln
               for ln in lines(out, "FAIL", "inference/duckdb")), out


# ------------------------------------------------------------- compaction
def compact_like_loopline(lake: Path, dir_rel: str, run: int, log: bool = True) -> int:
    """Merges a partition's files into one, as `loopline-ingest compact` does, and records it in
    _loopline/compaction.log unless `log` is false; returns how many files it merged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = lake / dir_rel
    old = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    t = pa.concat_tables([pq.ParquetFile(p).read() for p in old])
    table = dir_rel.split("/")[0]
    ts = "start_ts" if table == "sim_labels" else "ts"
    keys = ["device", "sensor", ts] if table == "telemetry" else ["device", ts]
    t = t.sort_by([(k, "ascending") for k in keys])
    name = f"part-compact~{run}-00000000.parquet"
    pq.write_table(t, folder / name, store_schema=False, compression="zstd",
                   use_dictionary=[f.name for f in t.schema if pa.types.is_string(f.type)])
    for p in old:
        p.unlink()
    if log:
        record = {"v": 1, "run": run, "table": table, "dir": dir_rel,
                  "removed": [p.relative_to(lake).as_posix() for p in old],
                  "added": [{"path": f"{dir_rel}/{name}", "rows": t.num_rows,
                             "bytes": (folder / name).stat().st_size}],
                  "compacted_at_us": run}
        with open(lake / "_loopline" / "compaction.log", "a") as f:
            f.write(json.dumps(record) + "\n")
    return len(old)


def first_partition(lake: Path, table: str) -> str:
    hour = sorted((lake / table).glob("site=*/line=*/date=*/hour=*"))[0]
    return hour.relative_to(lake).as_posix()


@pytest.fixture
def compacted(lakes, tmp_path):
    lake0, summary = lakes("good")
    lake = tmp_path / "lake"
    shutil.copytree(lake0, lake)
    merged = compact_like_loopline(lake, first_partition(lake, "telemetry"), 1_800_000_000_000_000)
    assert merged == 2
    compact_like_loopline(lake, first_partition(lake, "device_health"), 1_800_000_000_000_001)
    return lake, summary


def check(lake, summary, capsys):
    rc = check_lake.main(["--lake", str(lake), "--summary", str(summary), "--readers", "duckdb", "--no-defaults"])
    return rc, capsys.readouterr().out


def test_a_compacted_lake_matches_its_logs(compacted, capsys):
    lake, summary = compacted
    rc, out = check(lake, summary, capsys)
    assert rc == 0, out
    assert "note filesystem: compacted: 11 *.parquet files on disk, ingest committed 12" in out
    assert table_row(out, "duckdb")[2:4] == [GOOD_ROWS, "11"], out
    assert table_row(out, "device_health/files")[2:4] == [TABLE_ROWS["device_health"], "6"], out


def test_a_compaction_missing_from_the_log_is_caught(compacted, capsys):
    lake, summary = compacted
    (lake / "_loopline" / "compaction.log").unlink()
    rc, out = check(lake, summary, capsys)
    assert rc == 1, out
    assert lines(out, "FAIL", "filesystem") == [
        "FAIL filesystem: 11 *.parquet files on disk under telemetry/, summary files_committed=12"], out
    fails = lines(out, "FAIL", "device_health/files")
    assert any("part-compact~1800000000000001-00000000.parquet is on disk but in no commit log" in ln
               for ln in fails), out
    assert any("is in the commit log but not on disk" in ln for ln in fails), out


def test_a_compaction_record_that_disagrees_with_the_disk_is_caught(compacted, capsys):
    lake, summary = compacted
    log = lake / "_loopline" / "compaction.log"
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    # the telemetry record forgets the file it added, and removes one that never was
    records[0]["added"] = []
    records[0]["removed"].append(records[0]["dir"] + "/part-ghost-00000000.parquet")
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    rc, out = check(lake, summary, capsys)
    assert rc == 1, out
    fails = lines(out, "FAIL", "filesystem")
    assert any("removes" in ln and "part-ghost-00000000.parquet, which no log before it names" in ln
               for ln in fails), out
    assert any("part-compact~1800000000000000-00000000.parquet is on disk but in no commit log" in ln
               for ln in fails), out
