"""The cookbook runner must run every block of docs/cookbook.md, agree across engines on a good
lake, and fail, naming the block, on a block that raises, answers nothing or disagrees.

Run: .venv/bin/python -m pytest -q tests/interop
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cookbook
import synth_lake

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOC = ROOT / "docs" / "cookbook.md"
QUESTIONS = [
    "Samples per line and device per hour",
    "One device's sensor series over a time range",
    "Anomaly rate and p95 inference latency per line and model version",
    "Which model version each device ran, and when",
    "Latest health of each device",
    "Quarantined messages by reason",
    "Precision and recall of the running model",
    "The model registry's history",
]
FAST = "duckdb,polars,pyarrow"
UTC = dt.timezone.utc


def add_quarantine_and_registry(lake: Path) -> None:
    """The synthetic lake lacks the quarantine table and the model registry: add a few rows of
    each, laid out as ingest and dispatch write them."""
    schema = pa.schema([
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ingest_id", pa.string(), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("payload_bytes", pa.int64(), nullable=False),
    ])
    rows = {
        ("plant-a", "01"): [("undecodable", "not a TelemetryBatch", b"\x00\x01", 2),
                            ("out_of_range", "sensor temp: NaN", b"abc", 3)],
        ("plant-b", "01"): [("undecodable", "truncated", b"\x07", 9000)],
    }
    at = dt.datetime(2024, 3, 10, 23, 50, tzinfo=UTC)
    for n, ((site, line), msgs) in enumerate(rows.items()):
        folder = lake / "quarantine" / f"site={site}" / f"line={line}" / "date=2024-03-10" / "hour=23"
        folder.mkdir(parents=True)
        table = pa.table({
            "received_at": [at + dt.timedelta(seconds=i) for i in range(len(msgs))],
            "ingest_id": [synth_lake.INGEST_ID] * len(msgs),
            "topic": [f"loopline/v1/{site}/{line}/press-1/telemetry"] * len(msgs),
            "reason": [m[0] for m in msgs], "detail": [m[1] for m in msgs],
            "payload": [m[2] for m in msgs], "payload_bytes": [m[3] for m in msgs],
        }, schema=schema)
        pq.write_table(table, folder / f"part-{synth_lake.INGEST_ID}-9000000{n}.parquet", store_schema=False)
    history = {
        "01": [{"ts_us": 1710111600000000, "action": "promote", "version": "v1", "previous": None,
                "reason": "the devices' start-up model"},
               {"ts_us": 1710115200000000, "action": "promote", "version": "v2", "previous": "v1",
                "reason": "candidate F1 0.912 beats champion F1 0.874 by at least 0.010"}],
        "02": [{"ts_us": 1710111600000000, "action": "promote", "version": "v1", "previous": None,
                "reason": "the devices' start-up model"}],
    }
    for line, entries in history.items():
        folder = lake / "_models" / line
        folder.mkdir(parents=True)
        (folder / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
        (folder / "champion").write_text(entries[-1]["version"] + "\n")


@pytest.fixture(scope="session")
def lake(tmp_path_factory):
    lake, _ = synth_lake.build(tmp_path_factory.mktemp("cookbook"), "good")
    add_quarantine_and_registry(Path(lake))
    return Path(lake)


def run(lake, capsys, *args, doc=None):
    argv = [str(lake), *args] + (["--doc", str(doc)] if doc else [])
    rc = cookbook.main(argv)
    return rc, capsys.readouterr().out


def edited_doc(tmp_path, question, engine, old, new):
    """A copy of the real page with `old` replaced by `new` in the `engine` block under `question`."""
    text = DOC.read_text()
    block = next(b for b in cookbook.parse(text) if b.heading == question and b.engine == engine)
    lines = text.splitlines(keepends=True)
    start = block.line  # the fence is line block.line; the code follows
    end = start + block.code.count("\n")
    code = "".join(lines[start:end])
    assert old in code, f"{old!r} is not in the {engine} block of {question!r}"
    doc = tmp_path / "cookbook.md"
    doc.write_text("".join(lines[:start]) + code.replace(old, new) + "".join(lines[end:]))
    return doc, block.line


def test_the_page_has_every_question_in_every_engine():
    blocks = cookbook.parse(DOC.read_text())
    for engine in cookbook.ENGINES:
        mine = [b for b in blocks if b.engine == engine]
        assert [b.heading for b in mine if b.setup] == ["Setup"], engine
        assert [b.heading for b in mine if not b.setup] == QUESTIONS, engine
    assert [(b.engine, b.heading) for b in blocks if b.approx] == [("pyarrow", QUESTIONS[2])]
    assert len(blocks) == 4 * (1 + len(QUESTIONS))


def test_parse_names_heading_and_fence_line():
    text = "# T\n\n## Q one\n\n```sql duckdb\nSELECT 1;\n```\n\n```sh\nls\n```\n\n## Q two\n```python polars setup\nx = 1\n```\n"
    blocks = cookbook.parse(text)
    assert [(b.engine, b.heading, b.line, b.setup, b.code) for b in blocks] == [
        ("duckdb", "Q one", 5, False, "SELECT 1;\n"),
        ("polars", "Q two", 14, True, "x = 1\n"),
    ]


def test_parse_refuses_a_malformed_page():
    with pytest.raises(cookbook.CookbookError, match="line 2: code block never closed"):
        cookbook.parse("## Q\n```sql duckdb\nSELECT 1;\n")
    with pytest.raises(cookbook.CookbookError, match=r"must be ```sql duckdb"):
        cookbook.parse("```python duckdb\nx\n```\n")
    with pytest.raises(cookbook.CookbookError, match="unknown block flag"):
        cookbook.parse("```python polars fast\nx\n```\n")


def test_placeholder_rewrite():
    lake = "/data/lake 1"
    assert cookbook.rewrite('LAKE = "loopline-lake"\n', lake) == 'LAKE = "/data/lake 1"\n'
    assert (cookbook.rewrite("read_parquet('loopline-lake/' || tbl)", lake)
            == "read_parquet('/data/lake 1/' || tbl)")
    assert (cookbook.rewrite("read_json('loopline-lake/_models/*/history.jsonl')", lake)
            == "read_json('/data/lake 1/_models/*/history.jsonl')")
    # only the quoted path is the placeholder: prose and longer names stay
    untouched = "# the loopline-lake folder; 'loopline-lakes'; \"my-loopline-lake\"\n"
    assert cookbook.rewrite(untouched, lake) == untouched
    # every setup block of the page names the lake through the placeholder
    for block in cookbook.parse(DOC.read_text()):
        if block.setup:
            assert lake in cookbook.rewrite(block.code, lake), block.engine


def test_tables_read_by_a_block():
    blocks = {(b.heading, b.engine): b for b in cookbook.parse(DOC.read_text())}
    assert cookbook.tables_read(blocks[(QUESTIONS[5], "spark")].code) == {"quarantine"}
    assert cookbook.tables_read(blocks[(QUESTIONS[6], "polars")].code) == {"sim_labels", "inference"}
    for engine in cookbook.ENGINES:
        assert cookbook.tables_read(blocks[(QUESTIONS[7], engine)].code) == {"_models"}, engine


def test_every_block_runs_and_the_engines_agree(lake, capsys):
    rc, out = run(lake, capsys, "--engines", FAST)
    assert rc == 0, out
    assert f"cookbook: {3 * len(QUESTIONS)} queries, 3 engines, all passed" in out
    for q in QUESTIONS:
        assert f"agree [{q}]: duckdb, polars, pyarrow" in out, out
    assert "FAIL" not in out and "skip" not in out
    # 3 lines x 3 devices x 2 hours (a batch crosses midnight); line names stay strings (01, 02)
    assert "agree [Samples per line and device per hour]: duckdb, polars, pyarrow (18 rows)" in out, out
    assert "agree [Quarantined messages by reason]: duckdb, polars, pyarrow (3 rows)" in out, out
    assert "agree [The model registry's history]: duckdb, polars, pyarrow (3 rows)" in out, out


def test_a_block_that_raises_fails_naming_it(lake, capsys, tmp_path):
    doc, line = edited_doc(tmp_path, QUESTIONS[4], "polars", '"npu_temperature_c"', '"npu_temp_c"')
    rc, out = run(lake, capsys, "--engines", "duckdb,polars", doc=doc)
    assert rc == 1, out
    failure = f"cookbook.md:{line} [Latest health of each device] (polars): ColumnNotFoundError"
    assert re.search(re.escape(failure), out), out
    assert "cookbook: FAILED: 1 problem(s)" in out
    at = int(re.search(r"^      at cookbook.md:(\d+)$", out, re.M).group(1))  # the page's line that raised
    assert line < at <= line + 10, out
    assert "agree [Samples per line and device per hour]: duckdb, polars" in out  # the others still ran


def test_a_block_without_rows_fails(lake, capsys, tmp_path):
    doc, line = edited_doc(tmp_path, QUESTIONS[3], "duckdb", "FROM lake('device_health')",
                           "FROM lake('device_health') WHERE device = 'no-such-device'")
    rc, out = run(lake, capsys, "--engines", "duckdb", doc=doc)
    assert rc == 1, out
    assert f"FAIL  cookbook.md:{line} [Which model version each device ran, and when] (duckdb): the query returned no rows" in out


def test_engines_that_disagree_fail(lake, capsys, tmp_path):
    doc, line = edited_doc(tmp_path, QUESTIONS[0], "polars", 'pl.len().alias("samples")',
                           '(pl.len() + 1).alias("samples")')
    rc, out = run(lake, capsys, "--engines", "duckdb,polars", doc=doc)
    assert rc == 1, out
    assert re.search(rf"cookbook.md:{line} \[Samples per line and device per hour\]: polars disagrees with duckdb: "
                     r"row 1 \(sorted\), column samples: \d+ \(duckdb\) vs \d+ \(polars\)", out), out


def test_a_question_about_a_missing_table_is_skipped(lake, capsys, tmp_path):
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    shutil.rmtree(copy / "quarantine")
    rc, out = run(copy, capsys, "--engines", "duckdb,polars")
    assert rc == 0, out
    assert re.search(r"skip  cookbook.md:\d+ \[Quarantined messages by reason\] \(duckdb\): the lake has no quarantine/", out)
    assert f"cookbook: {2 * (len(QUESTIONS) - 1)} queries, 2 engines, all passed" in out


def test_a_missing_engine_is_skipped_or_required(lake, capsys, monkeypatch):
    real = cookbook.missing_requirement
    monkeypatch.setattr(cookbook, "missing_requirement",
                        lambda e: "polars is not installed" if e == "polars" else real(e))
    monkeypatch.delenv("LOOPLINE_REQUIRE_PYTHON_READERS", raising=False)
    rc, out = run(lake, capsys, "--engines", "duckdb,polars")
    assert rc == 0, out
    assert "skip  polars   polars is not installed" in out
    monkeypatch.setenv("LOOPLINE_REQUIRE_PYTHON_READERS", "1")
    rc, out = run(lake, capsys, "--engines", "duckdb,polars")
    assert rc == 1, out
    assert "FAIL  polars   polars is not installed (LOOPLINE_REQUIRE_PYTHON_READERS=1)" in out


def test_bad_invocations(tmp_path, capsys):
    assert cookbook.main([str(tmp_path / "nope")]) == 2
    assert cookbook.main([str(tmp_path), "--engines", "sqlite"]) == 2
    quoted = tmp_path / "it's"
    quoted.mkdir()
    assert cookbook.main([str(quoted)]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "unknown engine(s) sqlite" in err and "holds a quote" in err


def spark_missing():
    why = cookbook.missing_requirement("spark")
    if why and os.environ.get("LOOPLINE_REQUIRE_PYTHON_READERS") == "1":
        pytest.fail(f"LOOPLINE_REQUIRE_PYTHON_READERS=1 but {why}")
    return why


def test_spark_blocks_run_and_agree(lake):
    """Spark in its own process, as CI runs it: one local session for every block."""
    why = spark_missing()
    if why:
        pytest.skip(why)
    proc = subprocess.run([sys.executable, str(HERE / "cookbook.py"), str(lake), "--engines", "duckdb,spark"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"cookbook: {2 * len(QUESTIONS)} queries, 2 engines, all passed" in proc.stdout
    for q in QUESTIONS:
        assert f"agree [{q}]: duckdb, spark" in proc.stdout, proc.stdout
