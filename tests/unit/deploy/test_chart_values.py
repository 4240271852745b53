"""values.yaml, values.schema.json and the ci/ values files agree, and every value is documented."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubetune"
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Kubernetes objects passed through as they are; their inner keys are Kubernetes' to document.
PASSTHROUGH = {"resources", "podSecurityContext", "securityContext", "nodeSelector", "affinity"}


def _validator() -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    return jsonschema.Draft7Validator(SCHEMA)


def test_defaults_validate() -> None:
    _validator().validate(VALUES)


@pytest.mark.parametrize("path", sorted((CHART / "ci").glob("*-values.yaml")), ids=lambda p: p.stem)
def test_ci_values_merged_over_defaults_validate(path: Path) -> None:
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {k: merge(base.get(k), over[k]) if k in base else over[k] for k in over} | {
                k: v for k, v in base.items() if k not in over
            }
        return over

    _validator().validate(merge(copy.deepcopy(VALUES), yaml.safe_load(path.read_text()) or {}))


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("image", "tagg"), "1.0"),
        (("logFormat",), "xml"),
        (("watchNamespaces",), ["UPPER"]),
        (("metrics", "port"), 70000),
        (("crds", "keep"), "yes"),
        (("trainer", "image", "digest"), "sha256:short"),
        (("trainer", "backend"), "mpijob"),
    ],
)
def test_schema_rejects_mistakes(path: tuple[str, ...], bad: Any) -> None:
    values = copy.deepcopy(VALUES)
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert list(_validator().iter_errors(values)), f"{'.'.join(path)}={bad!r} was accepted"


def _documented_keys() -> list[tuple[int, str, bool]]:
    """(indent, key, has a comment right above it) for every key line, commented-out keys included."""
    out = []
    previous = ""
    for line in VALUES_TEXT.splitlines():
        match = re.match(r"^(\s*)(#\s*)?([A-Za-z][\w.-]*):(\s|$)", line)
        if match and not match.group(2):
            out.append((len(match.group(1)), match.group(3), previous.lstrip().startswith("#")))
        if line.strip():
            previous = line
    return out


def test_every_chart_value_has_a_comment() -> None:
    missing = []
    parents: list[str] = []
    for indent, key, commented in _documented_keys():
        depth = indent // 2
        parents = [*parents[:depth], key]
        if set(parents[:-1]) & PASSTHROUGH:
            continue
        if not commented:
            missing.append(".".join(parents))
    assert missing == [], f"values without a comment: {missing}"


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        if sub.get("type") == "object" and "properties" in sub:
            paths |= _schema_paths(sub, path + ".")
    return paths


def test_every_schema_property_appears_in_values_yaml() -> None:
    # Optional keys appear commented out (`# tag: ...`), so search the text, not the parsed YAML.
    shown = set(re.findall(r"^\s*#?\s*([A-Za-z][\w]*):", VALUES_TEXT, flags=re.M))
    absent = {p for p in _schema_paths(SCHEMA) if p.split(".")[-1] not in shown and p != "global"}
    assert absent == set()


def test_backend_choices_are_the_operators() -> None:
    from kubetune.operator.settings import BACKENDS

    assert tuple(SCHEMA["properties"]["trainer"]["properties"]["backend"]["enum"]) == BACKENDS
