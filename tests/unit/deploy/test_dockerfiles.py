"""The two Dockerfiles, read as text (no container engine runs here): pinned bases, non-root users,
no training stack in the operator image, and version pins that match pyproject and the
environment the test suite runs in.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's tools run on 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())
TRAINING_STACK = {"torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "bitsandbytes"}


@dataclass
class Instruction:
    keyword: str
    args: str
    heredoc: str = ""


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuations joined and heredoc bodies attached."""
    out: list[Instruction] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue
            line = line.rstrip()[:-1] + " " + nxt.strip()
        keyword, _, args = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        marker = re.search(r"<<-?'?(\w+)'?", args)
        if marker:
            body = []
            while i < len(lines) and lines[i].strip() != marker.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            instruction.heredoc = "\n".join(body)
        out.append(instruction)
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def final_user(instructions: list[Instruction]) -> str:
    users = [ins.args for ins in stages(instructions)[-1] if ins.keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    return users[-1]


def pins(lines: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in lines.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+-]+)", line)
        assert match, f"not an exact pin: {raw!r}"
        out[canonicalize_name(match.group(1))] = match.group(2)
    return out


def installed_version(name: str) -> str:
    # Local labels (+cpu, +cu128) name the build, not the release.
    return Version(md.version(name)).base_version if name == "torch" else md.version(name)


def requirement_names(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


# ---------------------------------------------------------------------------------------------
# Operator image
# ---------------------------------------------------------------------------------------------

OPERATOR = parse_dockerfile(REPO / "Dockerfile")


def test_operator_bases_are_pinned_slim_python() -> None:
    bases = [ins.args.split()[0] for ins in OPERATOR if ins.keyword == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base


def test_operator_runs_as_the_charts_non_root_user() -> None:
    user = final_user(OPERATOR)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert int(uid) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == CHART_VALUES["podSecurityContext"]["runAsGroup"]


def test_operator_entrypoint_is_kubetune_operator() -> None:
    final = stages(OPERATOR)[-1]
    assert [i.args for i in final if i.keyword == "ENTRYPOINT"] == ['["kubetune"]']
    assert [i.args for i in final if i.keyword == "CMD"] == ['["operator"]']


def test_operator_installs_no_training_stack() -> None:
    runs = " ".join(ins.args for ins in OPERATOR if ins.keyword == "RUN")
    assert "pip install" in runs
    assert "[train]" not in runs
    assert not any(re.search(rf"\b{name}\b", runs) for name in TRAINING_STACK - {"torch"})
    # The only mention of torch is the build-time check that it is absent.
    assert re.findall(r"torch", runs) == ["torch"] and "find_spec('torch') is not None" in runs


def _operator_constraints() -> dict[str, str]:
    (copy,) = [ins for ins in OPERATOR if ins.keyword == "COPY" and "constraints.txt" in ins.args]
    return pins(copy.heredoc)


def test_operator_constraints_pin_every_base_dependency_to_the_tested_version() -> None:
    constraints = _operator_constraints()
    base = requirement_names(PYPROJECT["project"]["dependencies"])
    assert set(base) <= set(constraints), f"unpinned: {sorted(set(base) - set(constraints))}"
    for name, version in constraints.items():
        assert version == installed_version(name), f"{name}: image {version}, tests run {installed_version(name)}"
        if name in base:
            assert base[name].specifier.contains(version), f"{name}=={version} breaks pyproject {base[name]}"
    assert not set(constraints) & TRAINING_STACK


# ---------------------------------------------------------------------------------------------
# Trainer image
# ---------------------------------------------------------------------------------------------

TRAINER = parse_dockerfile(REPO / "trainer_image" / "Dockerfile")
TRAINER_PINS = pins((REPO / "trainer_image" / "requirements.txt").read_text())


def _args(instructions: list[Instruction]) -> dict[str, str]:
    out = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            out[key] = value.strip('"')
    return out


def test_trainer_bases_are_pinned_cuda_images_of_one_version() -> None:
    bases = [ins.args.split()[0] for ins in TRAINER if ins.keyword == "FROM"]
    matches = [re.fullmatch(r"nvidia/cuda:(12\.\d+\.\d+)-cudnn-(devel|runtime)-ubuntu22\.04", b) for b in bases]
    assert all(matches), bases
    assert len({m.group(1) for m in matches if m}) == 1, "build and runtime stages use different CUDA versions"
    assert matches[-1] is not None and matches[-1].group(2) == "runtime", "the shipped stage must be the runtime image"
    cuda = matches[0].group(1) if matches[0] else ""
    major, minor = cuda.split(".")[:2]
    assert _args(TRAINER)["TORCH_INDEX_URL"].endswith(f"/cu{major}{minor}"), "torch index does not match CUDA"


def test_trainer_runs_as_non_root() -> None:
    uid, _, gid = final_user(TRAINER).partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0


def test_trainer_flash_attn_is_optional_and_off_by_default() -> None:
    assert _args(TRAINER)["FLASH_ATTN"] == "0"
    (run,) = [ins.args for ins in TRAINER if ins.keyword == "RUN" and "flash-attn" in ins.args]
    assert '"${FLASH_ATTN}" = "1"' in run


def test_trainer_installs_kubetune_train_against_the_pins() -> None:
    runs = [ins.args for ins in TRAINER if ins.keyword == "RUN" and "pip install" in ins.args]
    assert any('".[train]"' in r and "--constraint /tmp/requirements.txt" in r for r in runs)
    torch_install = [r for r in runs if "TORCH_INDEX_URL" in r]
    assert torch_install and "--constraint /tmp/requirements.txt" in torch_install[0]


def test_trainer_requirements_pin_the_train_extra_and_base_deps() -> None:
    wanted = requirement_names(
        PYPROJECT["project"]["optional-dependencies"]["train"] + PYPROJECT["project"]["dependencies"]
    )
    assert set(wanted) <= set(TRAINER_PINS), f"unpinned: {sorted(set(wanted) - set(TRAINER_PINS))}"
    for name, requirement in wanted.items():
        assert requirement.specifier.contains(TRAINER_PINS[name]), f"{name}=={TRAINER_PINS[name]} vs {requirement}"


GPU_PINS = pins((REPO / "trainer_image" / "requirements-gpu.txt").read_text())


def test_trainer_ships_liger_pinned_and_constrained_by_the_tested_stack() -> None:
    # kernels.liger: auto (kubetune/trainer/model.py) turns Liger on where liger_kernel imports: the
    # image must have it, at one version, installed so that it cannot move the tested torch.
    assert set(GPU_PINS) == {"liger-kernel"}
    assert not set(GPU_PINS) & set(TRAINER_PINS), "a GPU-only pin is also in requirements.txt"
    build = stages(TRAINER)[0]
    (run,) = [ins.args for ins in build if ins.keyword == "RUN" and "requirements-gpu.txt" in ins.args]
    assert "--constraint /tmp/requirements.txt" in run
    checked = [i for i, ins in enumerate(build) if ins.keyword == "RUN" and "pip check" in ins.args]
    assert checked and build.index(next(ins for ins in build if ins.args == run)) < checked[-1], (
        "install the GPU kernels before the final pip check"
    )


@pytest.mark.parametrize("name", sorted(TRAINER_PINS))
def test_trainer_pins_are_the_versions_the_tests_run(name: str) -> None:
    assert TRAINER_PINS[name] == installed_version(name)


# ---------------------------------------------------------------------------------------------
# Build context
# ---------------------------------------------------------------------------------------------


def test_dockerignore_admits_what_the_dockerfiles_copy_and_nothing_else() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "an allow-list keeps .venv, .git and test data out of the context"
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    for instructions in (OPERATOR, TRAINER):
        for ins in instructions:
            if ins.keyword != "COPY" or ins.args.startswith("--from") or ins.heredoc:
                continue
            *sources, _dest = ins.args.split()
            for src in sources:
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), src
