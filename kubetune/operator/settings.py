"""The operator's configuration: one typed object, read once from the environment the chart sets.

`kubetune operator` flags override the environment by writing back into it (`apply_to_env`), so
`kopf run -m kubetune.operator.handlers` and `kubetune operator` read the same thing the same way.

Not pydantic-settings: eight variables, three of them needing their own parsing (comma-separated
namespaces with `*`, a case-folded level, "set but empty" refused) would keep as many validators,
add a dependency to the operator image, and turn "KUBETUNE_METRICS_PORT: 'x' is not a port number"
into a multi-line ValidationError.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Literal

from kubetune import __version__, render

DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{__version__}"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
LOG_FORMATS = ("json", "plain")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BACKENDS = ("auto", *render.BACKENDS)


class SettingsError(ValueError):
    """A bad environment variable; the message names it."""


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 8080
    health_port: int = 8081
    log_format: Literal["json", "plain"] = "json"
    log_level: str = "INFO"
    default_backend: str = "auto"  # what spec.backend: auto means

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        return cls(
            namespaces=_namespaces(env.get("KUBETUNE_NAMESPACES", "")),
            trainer_image=_non_empty(env, "KUBETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            image_pull_policy=_choice(env, "KUBETUNE_TRAINER_IMAGE_PULL_POLICY", PULL_POLICIES, "IfNotPresent"),
            metrics_port=_port(env, "KUBETUNE_METRICS_PORT", 8080),
            health_port=_port(env, "KUBETUNE_HEALTH_PORT", 8081),
            log_format=_choice(env, "KUBETUNE_LOG_FORMAT", LOG_FORMATS, "json"),  # type: ignore[arg-type]
            log_level=_choice(env, "KUBETUNE_LOG_LEVEL", LOG_LEVELS, "INFO", upper=True),
            default_backend=_choice(env, "KUBETUNE_DEFAULT_BACKEND", BACKENDS, "auto"),
        )

    def apply_to_env(self, env: dict[str, str] | os._Environ[str]) -> None:
        env.update(
            KUBETUNE_NAMESPACES=",".join(self.namespaces),
            KUBETUNE_TRAINER_IMAGE=self.trainer_image,
            KUBETUNE_TRAINER_IMAGE_PULL_POLICY=self.image_pull_policy,
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_HEALTH_PORT=str(self.health_port),
            KUBETUNE_LOG_FORMAT=self.log_format,
            KUBETUNE_LOG_LEVEL=self.log_level,
            KUBETUNE_DEFAULT_BACKEND=self.default_backend,
        )


def _namespaces(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if "*" in names:
        return ()
    for name in names:
        if not name.replace("-", "").isalnum() or name != name.lower() or len(name) > 63:
            raise SettingsError(f"KUBETUNE_NAMESPACES: '{name}' is not a namespace name")
    return names


def _non_empty(env: Mapping[str, str], var: str, default: str) -> str:
    value = env.get(var)
    if value is None:
        return default
    if not value.strip():
        raise SettingsError(f"{var} is set but empty")
    return value.strip()


def _choice(env: Mapping[str, str], var: str, options: tuple[str, ...], default: str, *, upper: bool = False) -> str:
    value = env.get(var, "").strip() or default
    if upper:
        value = value.upper()
    if value not in options:
        raise SettingsError(f"{var}: '{value}' is not one of {', '.join(options)}")
    return value


def _port(env: Mapping[str, str], var: str, default: int) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise SettingsError(f"{var}: '{raw}' is not a port number (0-65535; 0 disables it)")
    return int(raw)
