"""Suite prompt sets read from files in the formats their projects publish, and the built-in stand-ins.

- XSTest (Röttger et al., 2024): ``xstest_prompts.csv`` with ``id, prompt, type, label, focus, note``, label
  ``safe`` or ``unsafe``; hub copies ship the same fields as JSONL or parquet, some without ``id``.
- HarmBench (Mazeika et al., 2024): ``harmbench_behaviors_text_*.csv`` with ``Behavior, FunctionalCategory,
  SemanticCategory, Tags, ContextString, BehaviorID``.
- StrongREJECT (Souly et al., 2024): ``strongreject_dataset.csv`` with ``category, source, forbidden_prompt``.
- JailbreakBench (Chao et al., 2024): ``harmful-behaviors.csv`` with ``Index, Goal, Target, Behavior, Category,
  Source`` (some copies add an unnamed index column first).
- OR-Bench (Cui et al., 2024): ``or-bench-80k.csv`` / ``or-bench-hard-1k.csv`` (prompts that look unsafe and are
  not: label safe) and ``or-bench-toxic.csv`` (label unsafe), with ``prompt, category``. The files do not say
  which they are, so the format is named: ``orbench-hard`` or ``orbench-toxic``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from harness.config import read_jsonl, read_text
from harness.data.prompts import MAX_PROMPT_CHARS
from harness.errors import UserError

SetFormat = Literal["auto", "xstest", "harmbench", "strongreject", "jailbreakbench", "orbench-hard", "orbench-toxic"]
MAX_ROWS = 100_000  # the largest published set here has 80k rows (OR-Bench); more is not a prompt set


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    prompt: str
    category: str  # XSTest's type, a behaviour's semantic category
    label: str  # what a good answer does: 'safe' (XSTest: comply) / 'unsafe' (decline); 'harmful' for behaviours
    context: str = ""  # HarmBench's ContextString: text the behaviour refers to, put before it in the prompt


# each format: the columns that identify it, and how a row becomes a prompt
FORMATS: dict[str, tuple[str, ...]] = {
    "xstest": ("prompt", "type", "label"),
    "harmbench": ("Behavior", "SemanticCategory", "BehaviorID"),
    "strongreject": ("forbidden_prompt", "category"),
    "jailbreakbench": ("Goal", "Category"),
}
NAMED_ONLY = {"orbench-hard": ("prompt", "category"), "orbench-toxic": ("prompt", "category")}


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a CSV (header first), JSONL or parquet file."""
    if path.suffix == ".parquet":
        from harness.data.prompts import _read_parquet

        return _read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path, "suite prompt file")
    text = read_text(path, "suite prompt file")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = []
        for row in reader:
            if None in row:
                raise UserError(f"{path}:{reader.line_num}: more fields than the header names")
            rows.append((reader.line_num, row))
            if len(rows) > MAX_ROWS:
                raise UserError(f"{path}: more than {MAX_ROWS:,} rows")
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: not readable as CSV ({e})") from None
    return rows


def detect(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> str:
    fields = set(rows[0][1]) if rows else set()
    for name, needed in FORMATS.items():
        if set(needed) <= fields:
            return name
    hint = (" (an OR-Bench file: say which with format: orbench-hard or orbench-toxic)"
            if set(NAMED_ONLY["orbench-hard"]) <= fields else "")
    raise UserError(f"{path}: not a suite prompt file of a known format (its fields are "
                    f"{', '.join(sorted(map(str, fields)))[:200]}){hint}; expected the columns of "
                    + "; ".join(f"{k} ({', '.join(v)})" for k, v in FORMATS.items()))


def _text(path: Path, line: int, row: dict[str, Any], key: str, required: bool = True) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise UserError(f"{path}:{line}: field '{key}' is missing or empty")
        return ""
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise UserError(f"{path}:{line}: field '{key}' must be text")
    v = str(v)
    if len(v) > MAX_PROMPT_CHARS:
        raise UserError(f"{path}:{line}: field '{key}' has {len(v):,} characters (at most {MAX_PROMPT_CHARS:,})")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{path}:{line}: field '{key}' holds a lone UTF-16 surrogate, which is not text") from None
    return v


def _prompt(fmt: str, path: Path, line: int, row: dict[str, Any]) -> SuitePrompt:
    t = lambda key, required=True: _text(path, line, row, key, required)  # noqa: E731
    if fmt == "xstest":
        label = t("label").strip().lower()
        if label not in ("safe", "unsafe"):
            raise UserError(f"{path}:{line}: field 'label' is {label[:40]!r}; XSTest labels are 'safe' and 'unsafe'")
        return SuitePrompt(t("id", False) or f"xstest-{line}", t("prompt"), t("type"), label)
    if fmt == "harmbench":
        return SuitePrompt(t("BehaviorID"), t("Behavior"), t("SemanticCategory"), "harmful", t("ContextString", False))
    if fmt.startswith("orbench"):
        return SuitePrompt(f"{fmt}-{line}", t("prompt"), t("category"), "safe" if fmt == "orbench-hard" else "unsafe")
    if fmt == "strongreject":
        return SuitePrompt(f"strongreject-{line}", t("forbidden_prompt"), t("category"), "harmful")
    index = t("Index", False) or str(line)
    return SuitePrompt(f"jbb-{index}", t("Goal"), t("Category"), "harmful")


def parse_rows(path: Path, rows: list[tuple[int, dict[str, Any]]], fmt: str = "auto") -> list[SuitePrompt]:
    if not rows:
        raise UserError(f"{path}: the suite prompt file is empty")
    fmt = detect(path, rows) if fmt == "auto" else fmt
    columns = {**FORMATS, **NAMED_ONLY}[fmt]
    missing = [k for k in columns if k not in rows[0][1]]
    if missing:
        raise UserError(f"{path}: a {fmt} file has the columns {', '.join(columns)}; missing {', '.join(missing)}")
    out, seen = [], {}
    for line, row in rows:
        p = _prompt(fmt, path, line, row)
        if p.id in seen:
            raise UserError(f"{path}:{line}: id {p.id[:80]!r} repeats line {seen[p.id]} (answers are paired by id)")
        seen[p.id] = line
        out.append(p)
    return out


BUILTIN_FILES = {"over_refusal": "builtin_over_refusal.jsonl", "harmful_behaviour": "builtin_harmful_behaviour.jsonl"}


def load_suite_prompts(source: str, fmt: SetFormat = "auto", suite: str = "") -> tuple[list[SuitePrompt], str]:
    """The prompts of ``source`` ('builtin' for the suite's built-in set, else a file) and the set's name."""
    if source == "builtin":
        ref = resources.files("harness.suites").joinpath(BUILTIN_FILES[suite])
        with resources.as_file(ref) as path:
            return parse_rows(path, read_jsonl(path, "suite prompt file"), fmt), f"builtin {suite}"
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path}: suite prompt file not found")
    return parse_rows(path, _rows(path), fmt), path.name


def set_hash(prompts: list[SuitePrompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.prompt, p.context, p.label], ensure_ascii=False).encode())
    return h.hexdigest()[:16]
