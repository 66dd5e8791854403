#!/usr/bin/env python3
"""Runs every query of the query cookbook (docs/cookbook.md) against a lake, so the page cannot rot.

    .venv/bin/python tests/interop/cookbook.py LAKE [--engines duckdb,polars,pyarrow,spark] [--doc FILE]

The page's fenced code blocks name their engine in the info string (```sql duckdb,
```python polars, ```python pyarrow, ```python spark); `setup` marks the one block per engine
that the others build on, `approx` a block whose floats are approximate. Blocks of any other kind
are prose. The lake path is written once as the string "loopline-lake" (or 'loopline-lake/...');
every quoted occurrence is replaced with LAKE before the block runs.

Each engine runs its setup block once and then its query blocks in order: DuckDB on one
connection (the answer is the last statement's result), Polars, pyarrow and Spark in a copy of
the setup block's namespace (the answer is the block's last expression; Spark: one session for
every block, stopped at the end). A block fails when it raises or answers with no rows. The
answers of the engines under one heading (one question) must agree: the same column names in
the same order and, rows sorted, equal values (floats within 1e-9 relative; 5 % when either
block is `approx`). A block that reads a table the lake lacks (no `quarantine/` folder when nothing
was quarantined) is skipped.

An engine whose library is missing (or, for Spark, Java) is skipped, and is a failure when
LOOPLINE_REQUIRE_PYTHON_READERS=1.

Exit status: 0 all ran blocks passed, 1 a block failed or the engines disagree, 2 bad invocation.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import decimal
import importlib.util
import math
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ENGINES = ("duckdb", "polars", "pyarrow", "spark")
LANGUAGE = {"duckdb": "sql", "polars": "python", "pyarrow": "python", "spark": "python"}
PLACEHOLDER = "loopline-lake"
DEFAULT_DOC = Path(__file__).resolve().parents[2] / "docs" / "cookbook.md"
TABLES = ("telemetry", "inference", "device_health", "sim_labels", "quarantine")
REL_TOL = 1e-9
APPROX_REL_TOL = 0.05

FENCE = re.compile(r"^(`{3,}|~{3,})\s*(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
QUOTED_PLACEHOLDER = re.compile(r"""(["'])""" + re.escape(PLACEHOLDER) + r"""(?=["'/])""")
QUOTED_TABLE = re.compile(r"""["'](""" + "|".join(TABLES) + r""")["'/]""")
MODELS = re.compile(r"""[/"']_models[/"']""")


class CookbookError(Exception):
    """A problem with the page itself (no setup block, an unreadable fence), not with a query."""


@dataclass
class Block:
    engine: str
    heading: str
    line: int          # line of the opening fence, 1-based
    code: str
    setup: bool = False
    approx: bool = False

    def where(self, doc: Path) -> str:
        return f"{doc.name}:{self.line} [{self.heading}] ({self.engine})"


@dataclass
class Outcome:
    block: Block
    status: str        # "ok", "fail", "skip"
    detail: str = ""
    rows: list | None = None
    columns: list | None = None
    seconds: float = 0.0


@dataclass
class Report:
    outcomes: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    engine_seconds: dict = field(default_factory=dict)
    engines_skipped: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- parsing

def parse(text: str) -> list[Block]:
    """The engine blocks of the page, in order, each with the heading above it."""
    blocks: list[Block] = []
    heading = "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            h = HEADING.match(lines[i])
            if h:
                heading = h.group(2)
            i += 1
            continue
        marker, info = fence.group(1), fence.group(2).split()
        start = i + 1
        j = start
        while j < len(lines) and not (lines[j].startswith(marker[0] * len(marker))
                                      and lines[j].strip(marker[0]).strip() == ""):
            j += 1
        if j == len(lines):
            raise CookbookError(f"line {i + 1}: code block never closed")
        words = [w.lower() for w in info]
        engine = next((w for w in words[1:2] if w in ENGINES), None)
        if engine is not None:
            if words[0] != LANGUAGE[engine]:
                raise CookbookError(f"line {i + 1}: a {engine} block must be ```{LANGUAGE[engine]} {engine}")
            unknown = [w for w in words[2:] if w not in ("setup", "approx")]
            if unknown:
                raise CookbookError(f"line {i + 1}: unknown block flag(s) {', '.join(unknown)}")
            blocks.append(Block(engine, heading, i + 1, "\n".join(lines[start:j]) + "\n",
                                setup="setup" in words[2:], approx="approx" in words[2:]))
        i = j + 1
    return blocks


def rewrite(code: str, lake: str) -> str:
    """The block with every quoted lake placeholder replaced by `lake`."""
    return QUOTED_PLACEHOLDER.sub(lambda m: m.group(1) + lake, code)


def tables_read(code: str) -> set[str]:
    found = set(QUOTED_TABLE.findall(code))
    if MODELS.search(code):
        found.add("_models")
    return found


# ----------------------------------------------------------------------------- engines

def missing_requirement(engine: str) -> str | None:
    """Why the engine cannot run here, or None."""
    module = {"duckdb": "duckdb", "polars": "polars", "pyarrow": "pyarrow", "spark": "pyspark"}[engine]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    if engine in ("duckdb", "polars", "spark") and importlib.util.find_spec("pyarrow") is None:
        return "pyarrow (used to compare answers) is not installed"
    if engine == "spark":
        java_home = os.environ.get("JAVA_HOME")
        if not (shutil.which("java") or (java_home and Path(java_home, "bin", "java").exists())):
            return "java is not installed (neither on PATH nor in JAVA_HOME)"
    return None


def run_python(code: str, namespace: dict, filename: str, first_line: int):
    """Executes the block in `namespace`; returns the value of its last statement, which must be
    an expression."""
    tree = ast.parse(code, filename=filename)
    ast.increment_lineno(tree, first_line)
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        raise CookbookError("the block does not end with an expression (its answer)")
    body = ast.Module(body=tree.body[:-1], type_ignores=[])
    exec(compile(body, filename, "exec"), namespace)
    return eval(compile(ast.Expression(tree.body[-1].value), filename, "eval"), namespace)


def to_arrow(answer):
    """The answer as a pyarrow Table, whatever engine produced it."""
    import pyarrow as pa
    if isinstance(answer, pa.Table):
        return answer
    mod = type(answer).__module__
    if mod.startswith("polars"):
        if hasattr(answer, "collect") and not hasattr(answer, "to_arrow"):
            answer = answer.collect()
        return answer.to_arrow()
    if mod.startswith("pyspark"):
        return answer.toArrow()
    if hasattr(answer, "fetch_arrow_table"):
        return answer.fetch_arrow_table()
    raise CookbookError(f"the block's answer is a {type(answer).__name__}, not a table")


class Engine:
    name = ""

    def setup(self, code: str, block: Block, doc: Path) -> None:
        raise NotImplementedError

    def query(self, code: str, block: Block, doc: Path):
        raise NotImplementedError

    def close(self) -> None:
        pass


class DuckDB(Engine):
    name = "duckdb"

    def __init__(self):
        import duckdb
        self.con = duckdb.connect(":memory:")

    def setup(self, code, block, doc):
        self.con.execute(code)

    def query(self, code, block, doc):
        relation = self.con.sql(code)
        if relation is None:
            raise CookbookError("the block's last statement returns nothing")
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
        return fetch()

    def close(self):
        self.con.close()


class Python(Engine):
    def __init__(self, name):
        self.name = name
        self.namespace: dict = {}

    def setup(self, code, block, doc):
        self.namespace = {"__name__": f"cookbook_{self.name}"}
        exec(compile(ast.increment_lineno(ast.parse(code), block.line), str(doc), "exec"), self.namespace)

    def query(self, code, block, doc):
        return to_arrow(run_python(code, dict(self.namespace), str(doc), block.line))


class Spark(Python):
    """One local session for every block. Before the page's setup block builds it, the driver is
    pinned to the loopback address; after, the session must be local with no web UI and fetch
    no packages."""

    def __init__(self):
        super().__init__("spark")
        self.local_dir = None

    def setup(self, code, block, doc):
        os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        super().setup(code, block, doc)
        spark = self.namespace.get("spark")
        if spark is None:
            raise CookbookError("the spark setup block defines no `spark` session")
        spark.sparkContext.setLogLevel("ERROR")
        conf = spark.sparkContext.getConf()
        self.local_dir = conf.get("spark.local.dir", None)
        problems = []
        if not conf.get("spark.master", "").startswith("local"):
            problems.append(f"master {conf.get('spark.master', '?')} is not local")
        if conf.get("spark.ui.enabled", "true").lower() != "false":
            problems.append("the web UI is on (spark.ui.enabled)")
        if conf.get("spark.driver.bindAddress", "") != "127.0.0.1":
            problems.append("the driver is not bound to 127.0.0.1 (spark.driver.bindAddress)")
        if conf.get("spark.jars.packages", ""):
            problems.append("spark.jars.packages fetches packages")
        if problems:
            raise CookbookError("the spark session is not local-only: " + "; ".join(problems))

    def close(self):
        spark = self.namespace.get("spark")
        if spark is not None:
            spark.stop()
        if self.local_dir and Path(self.local_dir).name.startswith("loopline-spark-"):
            shutil.rmtree(self.local_dir, ignore_errors=True)


def make_engine(name: str) -> Engine:
    if name == "duckdb":
        return DuckDB()
    if name == "spark":
        return Spark()
    return Python(name)


# ----------------------------------------------------------------------------- comparison

def normalise(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc)
    return value


def sort_key(row):
    key = []
    for v in row:
        if v is None:
            key.append((0, "", 0))
        elif isinstance(v, (bool, int, float)):
            key.append((1, "number", round(float(v), 6) if math.isfinite(float(v)) else str(v)))
        elif isinstance(v, dt.datetime):
            key.append((1, "datetime" if v.tzinfo else "naive datetime", v))
        else:
            key.append((1, type(v).__name__, v))
    return key


def same(a, b, tol) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            return math.isclose(a, b, rel_tol=tol, abs_tol=1e-12)
        return False
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime) and (a.tzinfo is None) != (b.tzinfo is None):
        return False
    return type(a) is type(b) and a == b or (isinstance(a, int) and isinstance(b, int) and a == b)


def differ(ref: Outcome, other: Outcome) -> str | None:
    """What differs between two engines' answers to one question, or None."""
    if ref.columns != other.columns:
        return f"columns {ref.columns} ({ref.block.engine}) vs {other.columns} ({other.block.engine})"
    if len(ref.rows) != len(other.rows):
        return f"{len(ref.rows)} rows ({ref.block.engine}) vs {len(other.rows)} ({other.block.engine})"
    tol = APPROX_REL_TOL if (ref.block.approx or other.block.approx) else REL_TOL
    for n, (ra, rb) in enumerate(zip(sorted(ref.rows, key=sort_key), sorted(other.rows, key=sort_key))):
        for col, a, b in zip(ref.columns, ra, rb):
            if not same(a, b, tol):
                return (f"row {n + 1} (sorted), column {col}: {a!r} ({ref.block.engine}) vs "
                        f"{b!r} ({other.block.engine})")
    return None


# ----------------------------------------------------------------------------- running

def run(doc: Path, lake: Path, engines: list[str], require: bool, out=None, show: bool = False) -> Report:
    report = Report()
    blocks = parse(doc.read_text(encoding="utf-8"))
    lake_str = str(lake)
    present = {t for t in TABLES if (lake / t).is_dir()}
    if (lake / "_models").is_dir():
        present.add("_models")

    def say(line: str) -> None:
        print(line, file=out or sys.stdout, flush=True)

    for name in engines:
        mine = [b for b in blocks if b.engine == name]
        setups = [b for b in mine if b.setup]
        if len(setups) != 1:
            raise CookbookError(f"{len(setups)} setup blocks for {name} in {doc} (need exactly one)")
        why = missing_requirement(name)
        if why is not None:
            report.engines_skipped[name] = why
            if require:
                report.failures.append(f"{name}: {why} (LOOPLINE_REQUIRE_PYTHON_READERS=1)")
                say(f"FAIL  {name:<8} {why} (LOOPLINE_REQUIRE_PYTHON_READERS=1)")
            else:
                say(f"skip  {name:<8} {why}")
            continue
        started = time.monotonic()
        engine = None
        try:
            setup = setups[0]
            try:
                engine = make_engine(name)
                engine.setup(rewrite(setup.code, lake_str), setup, doc)
            except Exception as e:  # noqa: BLE001 - any failure of the page's code is reported
                msg = f"{setup.where(doc)}: setup failed: {one_line(e)}"
                report.failures.append(msg)
                say(f"FAIL  {msg}")
                say(indent(traceback.format_exc()))
                continue
            for block in mine:
                if block.setup:
                    continue
                report.outcomes.append(run_block(engine, block, doc, lake_str, present, report, say, show))
        finally:
            if engine is not None:
                try:
                    engine.close()
                except Exception as e:  # noqa: BLE001
                    say(f"warn  {name:<8} closing: {one_line(e)}")
            report.engine_seconds[name] = time.monotonic() - started

    cross_check(report, doc, say)
    ran = [o for o in report.outcomes if o.status != "skip"]
    used = sorted({o.block.engine for o in ran}, key=ENGINES.index)
    times = ", ".join(f"{e} {report.engine_seconds[e]:.1f} s" for e in used)
    if not ran and not report.failures:
        report.failures.append("no query ran")
    if report.failures:
        say(f"cookbook: FAILED: {len(report.failures)} problem(s) in {len(ran)} queries, {len(used)} engines ({times})")
        for f in report.failures:
            say(f"  {f}")
    else:
        say(f"cookbook: {len(ran)} queries, {len(used)} engines, all passed ({times})")
    return report


def run_block(engine: Engine, block: Block, doc: Path, lake: str, present: set, report: Report, say,
              show: bool = False) -> Outcome:
    absent = sorted(tables_read(block.code) - present)
    if absent:
        say(f"skip  {block.where(doc)}: the lake has no {', '.join(t + '/' for t in absent)}")
        return Outcome(block, "skip", f"no {', '.join(absent)}")
    started = time.monotonic()
    try:
        table = engine.query(rewrite(block.code, lake), block, doc)
    except Exception as e:  # noqa: BLE001
        msg = f"{block.where(doc)}: {one_line(e)}"
        report.failures.append(msg)
        say(f"FAIL  {msg}")
        say(indent(traceback.format_exc()))
        at = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(doc)]
        if at:
            say(f"      at {doc.name}:{at[-1]}")
        return Outcome(block, "fail", one_line(e))
    took = time.monotonic() - started
    if table.num_rows == 0:
        msg = f"{block.where(doc)}: the query returned no rows"
        report.failures.append(msg)
        say(f"FAIL  {msg}")
        return Outcome(block, "fail", "no rows", seconds=took)
    rows = [tuple(normalise(v) for v in r.values()) for r in table.to_pylist()]
    say(f"ok    {block.where(doc)}: {len(rows)} rows, {took:.2f} s")
    if show:
        say(indent(table.slice(0, 10).to_pandas().to_string() if has_pandas() else str(table.slice(0, 10)), 40))
    return Outcome(block, "ok", rows=rows, columns=table.column_names, seconds=took)


def cross_check(report: Report, doc: Path, say) -> None:
    by_question: dict[str, list[Outcome]] = {}
    for o in report.outcomes:
        if o.status == "ok":
            by_question.setdefault(o.block.heading, []).append(o)
    for heading, answers in by_question.items():
        if len(answers) < 2:
            continue
        ref = answers[0]
        bad = False
        for other in answers[1:]:
            why = differ(ref, other)
            if why:
                bad = True
                msg = f"{doc.name}:{other.block.line} [{heading}]: {other.block.engine} disagrees with {ref.block.engine}: {why}"
                report.failures.append(msg)
                say(f"FAIL  {msg}")
        if not bad:
            say(f"agree [{heading}]: {', '.join(o.block.engine for o in answers)} ({len(ref.rows)} rows)")


def one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 400 else first[:400] + "..."


def indent(text: str, lines: int = 12) -> str:
    return "\n".join("      " + ln for ln in text.rstrip().splitlines()[-lines:])


def has_pandas() -> bool:
    return importlib.util.find_spec("pandas") is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lake", help="the lake's root folder (holds telemetry/, inference/, ...)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated, of {','.join(ENGINES)} (default: all)")
    ap.add_argument("--show", action="store_true", help="print the first rows of every answer")
    ap.add_argument("--doc", default=str(DEFAULT_DOC), help="the cookbook page (default: docs/cookbook.md)")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        print(f"cookbook: unknown engine(s) {', '.join(unknown) or '(none given)'}; "
              f"choose from {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    lake = Path(args.lake).resolve()
    if not lake.is_dir():
        print(f"cookbook: the lake {args.lake} is not a folder", file=sys.stderr)
        return 2
    if any(c in str(lake) for c in "'\"\\\n"):
        print(f"cookbook: the lake path {lake} holds a quote, backslash or newline; "
              "it cannot be put in the page's string literals", file=sys.stderr)
        return 2
    doc = Path(args.doc)
    if not doc.is_file():
        print(f"cookbook: the page {doc} does not exist", file=sys.stderr)
        return 2
    require = os.environ.get("LOOPLINE_REQUIRE_PYTHON_READERS") == "1"
    try:
        report = run(doc, lake, engines, require, show=args.show)
    except CookbookError as e:
        print(f"cookbook: {doc}: {e}", file=sys.stderr)
        return 2
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
