"""The configuration reference (docs/reference/config.md), generated from the pydantic models themselves: every key,
its type, its default and the comment the model's source gives it. The suite regenerates it and compares, so it
cannot go stale (``esgrpo reference --check``)."""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REFERENCE_DIR = Path("docs") / "reference"
FIELD = re.compile(r"^\s{4}(\w+)\s*:")


def source_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comment in the model's source: the comment lines just above it and the one beside it."""
    comments: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#") and line.startswith("    ") and not line.startswith("        "):
                above.append(stripped.lstrip("# "))
                continue
            m = FIELD.match(line)
            if m and m.group(1) in cls.model_fields:
                beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                comments[m.group(1)] = " ".join([*above, beside]).strip()
            above = []
    return comments


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it; validators attached with Annotated are the field's notes' business."""
    if typing.get_origin(annotation) is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if typing.get_origin(annotation) in (list, dict, tuple, set):
        return f"{typing.get_origin(annotation).__name__}[{', '.join(type_name(a) for a in args)}]"
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"typing\.|<class '([\w.]+)'>", lambda m: (m.group(1) or "").rsplit(".", 1)[-1], text)
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", text).replace("NoneType", "None")


def nested_model(annotation: Any) -> type[BaseModel] | None:
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def default_text(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        if isinstance(value, str):  # a string made by a function (a timestamp) is the moment's, not a default
            return "(computed when written)"
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def rows(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    comments = source_comments(model)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = prefix + (field.alias or name)
        sub = nested_model(field.annotation)
        note, kind = comments.get(name, "").replace("|", r"\|"), type_name(field.annotation).replace("|", r"\|")
        out.append(f"| `{key}` | {kind} | {default_text(field)} | {note} |")
        if sub is not None:
            out += rows(sub, key + ".")
    return out


def section(title: str, intro: str, model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    head = "| key | type | default | notes |\n| --- | --- | --- | --- |"
    return f"## {title}\n\n{intro}\n\n{head}\n" + "\n".join(rows(model, prefix, skip)) + "\n"


def config_reference() -> str:
    from harness.launch.benchmark import BenchmarkSpec
    from harness.method import RunSettings
    from harness.registry import available, get_method
    from scorer.service_config import ScorerServiceConfig

    parts = ["# Configuration reference", "",
             "Generated from the pydantic models (`esgrpo reference`); the test suite checks that it is current. "
             "Every key is a YAML key, a `--set` key and a key of a run record's `config`.", "",
             section("Run settings (`run:`)", "Shared by every method: a method config's `run:` section, a benchmark "
                     "spec's `run:` (which replaces it for every method), `--set run.KEY=...`.", RunSettings, "run.")]
    for name in available():
        method = get_method(name)
        parts.append(section(f"Method `{name}`", f"`configs/{name}/*.yaml`; `esgrpo run {name} --set KEY=...`; in a benchmark "
                             "spec, an entry's `set: [KEY=...]`.", method.config_model,
                             skip=("run",)))
    parts.append(section("Benchmark spec", "`benchmarks/*.yaml`: `esgrpo benchmark --spec`.", BenchmarkSpec,
                         skip=("run",)))
    parts.append(section("Scorer service", "`configs/scorer/*.yaml`: `esgrpo serve-scorer --config`, or embedded with "
                         "`run.scorer: {kind: embedded, config: ...}`.", ScorerServiceConfig))
    from harness.launch.slurm import ClusterSettings

    parts.append(section("Cluster file", "`containers/slurm/*.yaml`: `esgrpo slurm submit --cluster`. It says where "
                         "jobs run; the spec says what they run (its scorer too: `scorer_service`).", ClusterSettings))
    return "\n".join(parts)


def records_reference() -> str:
    from harness.records import SCHEMA_VERSION, EvalPoint, Point, RunRecord

    return "\n".join([
        "# Run record reference", "",
        "Generated from the pydantic models (`esgrpo reference`); the test suite checks that it is current. "
        f"`record.json` in every run folder is a `RunRecord` (schema {SCHEMA_VERSION}); `evals/eval-*.jsonl` holds "
        "one line per held-out prompt (`id`, `prompt`, `response`, `reward`, `cost`, `category`, `expected_safe`, "
        "judge scores).", "",
        section("RunRecord (`record.json`)", "Rewritten atomically after every step.", RunRecord),
        section("Point (`series[]`, one per training step)", "Training-time figures of the policy being trained.", Point),
        section("EvalPoint (`evals[]`, one per budget mark)", "Greedy evaluation on the held-out prompts; `mark` is "
                "the budget mark it stands for, `completions` where it ran.", EvalPoint)])


REFERENCES = {"config.md": config_reference, "records.md": records_reference}


def stale_references(folder: Path = REFERENCE_DIR) -> list[Path]:
    return [folder / name for name, make in REFERENCES.items()
            if not (folder / name).is_file() or (folder / name).read_text() != make()]


def write_reference(folder: Path = REFERENCE_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in REFERENCES.items():
        (folder / name).write_text(make())
    return [folder / name for name in REFERENCES]
