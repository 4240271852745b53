"""Which environment variable names a FineTuneJob may set, and with what kind of value.

Each rule is one regular expression, evaluated by `kubetune validate` (Python `re`) and by the API
server (the CRD's CEL `matches`, RE2), so both refuse the same names. The expressions use only
syntax the two engines share: no lookaround, inline `(?i)` at the start.
"""

from __future__ import annotations

import re

# What the API server accepts as an env var name (IsEnvVarName): no '=', no leading digit.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
ENV_NAME_MAX = 256  # bounds the CEL cost estimate; no real name comes near it

# Names the trainer pods get from kubetune's renderer, torchrun or the Kubeflow controller, and
# names that change what runs or where credentials come from. A user value would silently break
# the run or duplicate an env entry. The value says what to set instead.
RESERVED_ENV_PREFIXES = {
    "KUBETUNE_": "set by kubetune",
    "PET_": "set by the Kubeflow controller for torchrun",
    "TORCHELASTIC_": "set by torchrun",
}
RESERVED_ENV = {
    **dict.fromkeys(
        ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"],
        "set by torchrun and the Kubeflow controller",
    ),
    "NODE_RANK": "set by torchrun and the Kubeflow controller",
    "HF_HOME": "set by kubetune to its cache volume",
    "PYTHONUNBUFFERED": "set by kubetune",
    "TOKENIZERS_PARALLELISM": "set by kubetune",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "set by kubetune",
    "NCCL_DEBUG": "set from spec.network.nccl.debug",
    "NCCL_IB_DISABLE": "set from spec.network.nccl.ibDisable",
    "NCCL_SOCKET_IFNAME": "set from spec.network.nccl.socketIfname",
    "AWS_ENDPOINT_URL": "redirects every AWS service (STS too): set spec.storage.endpoint",
    "AWS_ENDPOINT_URL_S3": "set from spec.storage.endpoint",
    "AWS_REGION": "set from spec.storage.region",
    "AWS_DEFAULT_REGION": "set from spec.storage.region",
    "AWS_ACCESS_KEY_ID": "set from spec.storage.credentialsSecret",
    "AWS_SECRET_ACCESS_KEY": "set from spec.storage.credentialsSecret",
    "AWS_SESSION_TOKEN": "set from spec.storage.credentialsSecret",
    "LD_PRELOAD": "would load foreign code into the trainer",
    "PYTHONPATH": "would replace the trainer's own modules",
}
RESERVED_ENV_PATTERN = (
    "^(("
    + "|".join(re.escape(p) for p in RESERVED_ENV_PREFIXES)
    + ").*|"
    + "|".join(re.escape(n) for n in sorted(RESERVED_ENV))
    + ")$"
)

# A credential's name ends in one of these words, or has SECRET or PASSWORD anywhere:
# HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD_FILE... A name with the word DISABLE
# is a switch (HF_HUB_DISABLE_IMPLICIT_TOKEN), and TOKENIZERS_PARALLELISM or MAX_TOKENS are no words.
_CREDENTIAL_LAST_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "CREDENTIALS")
CREDENTIAL_PATTERN = f"(?i)((^|_)({'|'.join(_CREDENTIAL_LAST_WORDS)})$|(^|_)(SECRET|PASSWORD)(_|$))"
SWITCH_PATTERN = "(?i)(^|_)DISABLE(_|$)"


def looks_like_credential(name: str) -> bool:
    """HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY: yes. TOKENIZERS_PARALLELISM, MAX_TOKENS,
    HF_HUB_DISABLE_IMPLICIT_TOKEN (a switch): no."""
    return bool(re.search(CREDENTIAL_PATTERN, name)) and not re.search(SWITCH_PATTERN, name)


def credential_cel(name: str) -> str:
    """The CEL twin of looks_like_credential for the string expression `name`."""
    return f"({name}.matches('{CREDENTIAL_PATTERN}') && !{name}.matches('{SWITCH_PATTERN}'))"


def reserved_why(name: str) -> str | None:
    """Why `name` is not the user's to set, or None when it is."""
    if not re.match(RESERVED_ENV_PATTERN, name):
        return None
    return RESERVED_ENV.get(name) or next(why for p, why in RESERVED_ENV_PREFIXES.items() if name.startswith(p))


def env_name_problem(name: str) -> str | None:
    """What is wrong with `name` as an env var name a FineTuneJob sets, or None."""
    if not re.match(ENV_NAME_PATTERN, name) or len(name) > ENV_NAME_MAX:
        return f"'{name}' is not a valid environment variable name (letters, digits, '_', '-', '.'; no '=')"
    why = reserved_why(name)
    return f"{name} is reserved ({why})" if why else None


def env_name_cel(name: str) -> list[tuple[str, str]]:
    """CEL rules (rule, message) refusing what env_name_problem refuses, for the expression `name`."""
    return [
        (f"{name}.matches('{ENV_NAME_PATTERN}')", "not a valid environment variable name (no '=')"),
        (
            f"!{name}.matches('{RESERVED_ENV_PATTERN}')",
            "reserved: set by kubetune, torchrun or the Kubeflow controller, or settable only through "
            "its own field (see kubetune validate)",
        ),
    ]
