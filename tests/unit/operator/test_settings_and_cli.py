"""Operator settings from the environment, and `kubetune operator` failing fast on bad ones."""

from __future__ import annotations

import pytest

from kubetune.cli import main
from kubetune.operator.settings import DEFAULT_TRAINER_IMAGE, OperatorConfig, SettingsError


def test_defaults() -> None:
    config = OperatorConfig.from_env({})
    assert config.clusterwide
    assert config.trainer_image == DEFAULT_TRAINER_IMAGE
    assert (config.metrics_port, config.health_port) == (8080, 8081)
    assert (config.log_format, config.log_level, config.image_pull_policy) == ("json", "INFO", "IfNotPresent")
    assert config.default_backend == "auto"


def test_every_variable_is_read() -> None:
    config = OperatorConfig.from_env(
        {
            "KUBETUNE_NAMESPACES": "team-a, team-b",
            "KUBETUNE_TRAINER_IMAGE": "registry/trainer:1",
            "KUBETUNE_TRAINER_IMAGE_PULL_POLICY": "Always",
            "KUBETUNE_METRICS_PORT": "9090",
            "KUBETUNE_HEALTH_PORT": "0",
            "KUBETUNE_LOG_FORMAT": "plain",
            "KUBETUNE_LOG_LEVEL": "debug",
            "KUBETUNE_DEFAULT_BACKEND": "trainjob",
        }
    )
    assert config.default_backend == "trainjob"
    assert config.namespaces == ("team-a", "team-b") and not config.clusterwide
    assert config.trainer_image == "registry/trainer:1"
    assert config.image_pull_policy == "Always"
    assert (config.metrics_port, config.health_port) == (9090, 0)
    assert (config.log_format, config.log_level) == ("plain", "DEBUG")


@pytest.mark.parametrize("value", ["", "*", "a,*"])
def test_all_namespaces(value: str) -> None:
    assert OperatorConfig.from_env({"KUBETUNE_NAMESPACES": value}).clusterwide


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("KUBETUNE_METRICS_PORT", "http", "KUBETUNE_METRICS_PORT: 'http' is not a port number"),
        ("KUBETUNE_HEALTH_PORT", "70000", "KUBETUNE_HEALTH_PORT: '70000' is not a port number"),
        ("KUBETUNE_LOG_FORMAT", "xml", "KUBETUNE_LOG_FORMAT: 'xml' is not one of json, plain"),
        ("KUBETUNE_LOG_LEVEL", "loud", "KUBETUNE_LOG_LEVEL: 'LOUD' is not one of"),
        ("KUBETUNE_TRAINER_IMAGE_PULL_POLICY", "Sometimes", "KUBETUNE_TRAINER_IMAGE_PULL_POLICY: 'Sometimes'"),
        ("KUBETUNE_TRAINER_IMAGE", " ", "KUBETUNE_TRAINER_IMAGE is set but empty"),
        ("KUBETUNE_NAMESPACES", "Team_A", "KUBETUNE_NAMESPACES: 'Team_A' is not a namespace name"),
        ("KUBETUNE_DEFAULT_BACKEND", "mpijob", "KUBETUNE_DEFAULT_BACKEND: 'mpijob' is not one of auto, trainjob"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        OperatorConfig.from_env({var: value})
    assert fragment in str(err.value)


def test_round_trip_through_the_environment() -> None:
    config = OperatorConfig(
        namespaces=("x",), metrics_port=1, health_port=2, log_format="plain", default_backend="pytorchjob"
    )
    env: dict[str, str] = {}
    config.apply_to_env(env)
    assert OperatorConfig.from_env(env) == config


def test_cli_fails_fast_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "eighty")
    assert main(["operator", "--namespace", "default"]) == 2
    assert "KUBETUNE_METRICS_PORT: 'eighty' is not a port number" in capsys.readouterr().err


def test_cli_rejects_conflicting_namespace_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator", "--namespace", "a", "--all-namespaces"]) == 2
    assert "not both" in capsys.readouterr().err


def test_cli_help_documents_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["operator", "--help"])
    text = capsys.readouterr().out
    for var in (
        "KUBETUNE_NAMESPACES",
        "KUBETUNE_TRAINER_IMAGE",
        "KUBETUNE_METRICS_PORT",
        "KUBETUNE_HEALTH_PORT",
        "KUBETUNE_DEFAULT_BACKEND",
    ):
        assert var in text
    for flag in ("--namespace", "--all-namespaces", "--standalone", "--metrics-port", "--health-port", "--verbose"):
        assert flag in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all-namespaces", "--standalone", "--peering", "kubetune"], "not both"),
        (["--namespace", "a", "--peering", "kubetune"], "--peering needs cluster-wide mode"),
    ],
)
def test_cli_rejects_peering_it_cannot_do(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator", *args]) == 2
    assert message in capsys.readouterr().err
