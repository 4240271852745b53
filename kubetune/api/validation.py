"""Turn YAML text into FineTuneJobs, or into a list of problems each naming its field.

Used by `kubetune validate`, `kubetune render`, the operator (InvalidSpec condition) and the
trainer, so that every entry point says the same thing about the same mistake.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api import v1alpha1 as api


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (a dotted field path) and what."""

    path: str
    message: str
    source: str = ""  # file name and document index, when known

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class SpecError(ValueError):
    """A FineTuneJob that does not validate. `problems` has one entry per mistake."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _loc_to_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model class that the location points into (for 'did you mean')."""
    model: type[BaseModel] | None = api.FineTuneJob
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = None
        for name, info in model.model_fields.items():
            if part in (name, info.alias):
                field = info
                break
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(err: Any) -> tuple[tuple[int | str, ...], str]:
    """A short, human message for one pydantic error, and the location it belongs to."""
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        parent, name = loc[:-1], str(loc[-1])
        model = _model_at(parent)
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(name, _field_names(model), n=1, cutoff=0.6)
            if not close:
                lowered = {n.lower(): n for n in _field_names(model)}
                flat = name.replace("_", "").replace("-", "").lower()
                close = [lowered[flat]] if flat in lowered else []
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known fields: {', '.join(_field_names(model))})"
        return loc, f"unknown field '{name}'{hint}"
    if kind == "missing":
        return loc, "required field is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return loc, f"must be {op} {bound} (got {_shown(value)})"
    if kind in ("enum", "literal_error"):
        expected = str(ctx.get("expected", "")).replace("'", "")
        suggestion = ""
        if isinstance(value, str):
            options = [o.strip() for o in expected.replace(" or ", ",").split(",") if o.strip()]
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
            if close:
                suggestion = f" (did you mean '{close[0]}'?)"
        return loc, f"must be one of {expected} (got {_shown(value)}){suggestion}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"must be a whole number (got {_shown(value)})"
    if kind in ("float_type", "float_parsing"):
        return loc, f"must be a number (got {_shown(value)})"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"must be true or false (got {_shown(value)})"
    if kind == "string_type":
        return loc, f"must be a string (got {_shown(value)})"
    if kind == "list_type":
        return loc, f"must be a list (got {_shown(value)})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return loc, f"must be a mapping of fields (got {_shown(value)})"
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length", 1)
        what = "character" if kind == "string_too_short" else "item"
        return loc, f"must have at least {n} {what}{'s' if n != 1 else ''}"
    if kind in ("too_long", "string_too_long"):
        return loc, f"must have at most {ctx.get('max_length')} {'characters' if 'string' in kind else 'items'}"
    if kind == "string_pattern_mismatch":
        meaning = api.PATTERN_MEANINGS.get(str(ctx.get("pattern")), f"does not match {ctx.get('pattern')}")
        return loc, f"{_shown(value)} {meaning}"
    if kind == "value_error":
        return loc, str(ctx.get("error", err["msg"]))
    return loc, str(err["msg"])


def problems_from_validation_error(exc: ValidationError, source: str = "") -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc, msg = _message(err)
        # Literal/enum unions report once per member type; keep one line per field.
        key = (_loc_to_path(loc), msg)
        if key in seen:
            continue
        seen.add(key)
        problems.append(Problem(_loc_to_path(loc), msg, source))
    return problems


def parse_job(doc: Any, source: str = "") -> api.FineTuneJob:
    """Validate one decoded document. Raises SpecError listing every problem."""
    if not isinstance(doc, dict):
        raise SpecError([Problem("", f"expected a Kubernetes object (a mapping), got {_shown(doc)}", source)])
    head: list[Problem] = []
    if doc.get("apiVersion") != api.API_VERSION:
        got = doc.get("apiVersion")
        head.append(Problem("apiVersion", f"must be {api.API_VERSION} (got {_shown(got)})", source))
    if doc.get("kind") != api.KIND:
        head.append(Problem("kind", f"must be {api.KIND} (got {_shown(doc.get('kind'))})", source))
    if head:
        raise SpecError(head)
    try:
        # Strict JSON-mode validation accepts exactly what the API server's CRD schema accepts:
        # "2" is not a number and "yes" is not a boolean (lax mode would coerce both silently).
        return api.FineTuneJob.model_validate_json(json.dumps(doc, default=str), strict=True)
    except ValidationError as exc:
        raise SpecError(problems_from_validation_error(exc, source)) from None


# Limits that keep hostile input cheap to refuse. The API server takes request bodies up to 3 MiB;
# no FineTuneJob comes near 100 levels or 100,000 nodes (an affinity is about 10 levels deep).
MAX_FILE_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 100
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """A SafeLoader (no arbitrary objects) that reads YAML the way the API server does, and refuses
    what the API server's decoder refuses or what would expand without bound:

    - PyYAML reads YAML 1.1, where `1e-4` is a string; kubectl (YAML 1.2) sends it as a number.
    - A key twice in one mapping is an error (the API server's strict decoding refuses it too);
      PyYAML would silently keep the last one.
    - Aliases are shared on load but copied by every later step: a 1 KB "billion laughs" file
      expands to 10^9 nodes, so the expanded size is counted before anything copies it.
    - The composer recurses once per level; deep nesting is refused before Python's stack runs out.
    """

    def compose_document(self) -> yaml.Node | None:
        self._depth = 0
        node = super().compose_document()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"the document expands to more than {MAX_NODES} nodes (YAML aliases?)", node.start_mark
            )
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *defaults` then overriding a key is what merge keys are for
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base constructor says so
            if earlier != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {earlier})", key_node.start_mark
                )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is copied out; linear in the distinct nodes."""
    known = memo.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def read_job_text(path: str) -> str:
    """A FineTuneJob file's text, or stdin's for '-'. Raises SpecError (never a traceback) when it
    cannot be read or is larger than the API server would take."""
    source = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError([Problem("", f"cannot read file: {exc.strerror}", source)]) from None
    except UnicodeDecodeError:
        raise SpecError([Problem("", "file is not UTF-8 text", source)]) from None
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // (1024 * 1024)
        raise SpecError([Problem("", f"file is larger than {limit} MiB, the API server's request limit", source)])
    return text


def load_documents(text: str, source: str = "") -> list[tuple[str, Any]]:
    """Split YAML text into (label, document) pairs; empty documents are skipped. The one YAML
    reader of every command that takes a FineTuneJob file."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([Problem("", f"not valid YAML{where}: {problem}", source)]) from None
    labelled = []
    non_empty = [d for d in docs if d is not None]
    for i, doc in enumerate(non_empty):
        label = f"{source}#{i + 1}" if len(non_empty) > 1 else source
        labelled.append((label, doc))
    if not labelled:
        raise SpecError([Problem("", "no YAML document found", source)])
    return labelled


def load_jobs(text: str, source: str = "") -> list[api.FineTuneJob]:
    """Every FineTuneJob in the text; SpecError with all problems of all documents if any is bad."""
    jobs: list[api.FineTuneJob] = []
    problems: list[Problem] = []
    for label, doc in load_documents(text, source):
        try:
            jobs.append(parse_job(doc, label))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return jobs


def load_job_file(path: str) -> api.FineTuneJob:
    """Exactly one FineTuneJob from a file."""
    jobs = load_jobs(read_job_text(path), path)
    if len(jobs) != 1:
        raise SpecError([Problem("", f"expected one FineTuneJob, found {len(jobs)}", path)])
    return jobs[0]
