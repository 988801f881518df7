"""YAML configs validated by pydantic, with dotted command-line overrides (``--set es.sigma=0.002``)."""

from __future__ import annotations

import copy
import difflib
import json
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from harness.errors import UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, so a typo never silently falls back to a default, and
    inf/nan are refused everywhere (a σ, a deadline or a λ bound of inf fails much later, or hangs)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_booleans(cls, data: Any) -> Any:
        """A boolean is not a number (``seed: true`` is not seed 1), and a number or a word is not a boolean
        (``tensorboard: 1``, ``"yes"``): pydantic's lax mode would take both."""
        if not isinstance(data, dict):
            return data
        for name, f in cls.model_fields.items():
            key = f.alias if f.alias in data else name
            if key not in data or data[key] is None:
                continue
            kinds = _scalar_kinds(f.annotation)
            value = data[key]
            if isinstance(value, bool) and kinds and bool not in kinds and kinds & {int, float}:
                raise ValueError(f"{key}: {str(value).lower()} is a boolean, not a number")
            if kinds == {bool} and not isinstance(value, bool):
                raise ValueError(f"{key}: {str(value)[:40]!r} is not a boolean (write true or false)")
        return data


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types an annotation admits (``int | None`` -> {int}); empty for anything else it admits too."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    kinds = {typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args} - {type(None)}
    return kinds if kinds and kinds <= {bool, int, float, str} else set()


def renamed(data: Any, old: str, new: str, where: str) -> Any:
    """A config key renamed or moved this release (dotted paths within ``data``: ``eval.max_new_tokens`` →
    ``rollout.max_new_tokens``): the old one still works, for one release, with a warning that names the new one
    (both given: the new one wins, and the warning says so). ``where`` is the prefix the user writes (``run.``)."""
    *old_parents, old_key = old.split(".")
    holder = data
    for part in old_parents:
        holder = holder.get(part) if isinstance(holder, dict) else None
    if not isinstance(data, dict) or not isinstance(holder, dict) or old_key not in holder:
        return data
    data = copy.deepcopy(data)  # the caller's dict stays as it was
    holder = data
    for part in old_parents:
        holder = holder[part]
    value = holder.pop(old_key)
    *new_parents, new_key = new.split(".")
    target = data
    for part in new_parents:
        target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
    if new_key in target:
        warnings.warn(f"{where}{old} is deprecated and ignored here: {where}{new} is given too", FutureWarning,
                      stacklevel=3)
    else:
        warnings.warn(f"{where}{old} is deprecated and goes in the next release: write {where}{new} instead",
                      FutureWarning, stacklevel=3)
        target[new_key] = value
    return data


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for "did you mean"), or None where it is not one."""
    for part in loc:
        if model is None:
            return None
        fields = {**model.model_fields, **{f.alias: f for f in model.model_fields.values() if f.alias}}
        if part not in fields:
            return None
        ann = fields[part].annotation
        candidates = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model


def did_you_mean(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    holder = _model_at(model, loc[:-1])
    if holder is None or not loc:
        return ""
    names = [*holder.model_fields, *(f.alias for f in holder.model_fields.values() if f.alias)]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f" (did you mean {'.'.join(map(str, (*loc[:-1], close[0])))}?)" if close else ""


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        hint = did_you_mean(model, tuple(e["loc"])) if e["type"] == "extra_forbidden" else ""
        lines.append(f"  {path}: {e['msg']}{hint}")
    return "\n".join(lines)


def read_bytes(path: Path, what: str = "file") -> bytes:
    """A user's file, or a UserError that names it (missing, a folder, unreadable)."""
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if not path.is_file():
        raise UserError(f"{path}: {what} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def read_text(path: Path, what: str = "file") -> str:
    """UTF-8 text of a user's file, or a UserError that names it (missing, a folder, unreadable, not UTF-8)."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None


MAX_LINE_BYTES = 4 << 20  # a prompt is at most 20,000 characters; a sample adds its response


class RepeatedKey(Exception):
    pass


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key written twice (json keeps the last, silently)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RepeatedKey(k)
        out[k] = v
    return out


def read_jsonl(path: Path, what: str = "JSONL file") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line, or a UserError naming the file and line."""
    return read_jsonl_resuming(path, what, drop_cut=False)[0]


def read_jsonl_resuming(path: Path, what: str = "JSONL file",
                        drop_cut: bool = True) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """As read_jsonl, for a file a killed writer appended to: an unterminated last line that is not valid (UTF-8
    cut inside a character, JSON cut short) is what a kill mid-write leaves, and is dropped (True in the pair's
    second place) instead of refused."""
    data = read_bytes(path, what)
    # split on \n only: str.splitlines() would also split inside a JSON string at \u2028 and friends
    lines = data.split(b"\n")
    rows, cut = [], False
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{path}:{lineno}: a line of {len(raw):,} bytes (a line holds at most {MAX_LINE_BYTES:,})")
        try:
            obj = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
        except RepeatedKey as e:
            raise UserError(f"{path}:{lineno}: key {str(e)[:80]!r} is written twice") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if drop_cut and lineno == len(lines):  # no newline after it: the write was cut off
                cut = True
                continue
            why = (f"not UTF-8 (byte 0x{e.object[e.start]:02x} at column {e.start + 1})"
                   if isinstance(e, UnicodeDecodeError) else f"not valid JSON ({e.msg} at column {e.colno})")
            raise UserError(f"{path}:{lineno}: {why}") from None
        except RecursionError:
            raise UserError(f"{path}:{lineno}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, obj))
    return rows, cut


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; a complex key is left to PyYAML
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key_node.value!r} is written twice",
                                                        key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str, with_line: bool = True) -> Any:
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.line + 1}:" if mark and with_line else ""
        raise UserError(f"{source}:{where} not valid YAML ({getattr(e, 'problem', None) or e})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = parse_yaml(read_text(path, "config file"), str(path))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings; values are parsed as YAML scalars (``0.1``, ``true``, ``[1,2]``)."""
    for item in overrides or []:
        shown = repr(item) if len(item) <= 120 else repr(item[:100] + "…")  # an error never echoes a huge value
        if "=" not in item:
            raise UserError(f"override {shown}: expected KEY=VALUE (e.g. sigma=0.002)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(f"override {shown}: empty key")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {shown}: {part} is not a mapping")
        node[parts[-1]] = parse_yaml(raw, f"override {shown}", with_line=False)
    return data


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source, model)) from None


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    data = read_yaml(path) if path else {}
    return validate(model, apply_overrides(data, overrides), str(path or "<defaults>"))
