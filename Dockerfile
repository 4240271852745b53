# syntax=docker/dockerfile:1.7
# The kubetune operator image: the base `kubetune` install (pydantic, kopf, kubernetes, boto3, prometheus-client) and
# nothing of the training stack. Build from the repository root:
#
#   docker build -t ghcr.io/kubetune/operator:0.1.0 .
#
# The chart runs it as `kubetune operator` with a read-only root filesystem, as uid 65532.

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The versions the operator is tested with; tests/unit/deploy/test_dockerfiles.py keeps them in
# step with the project's environment and with pyproject's base dependencies.
COPY <<EOF /tmp/constraints.txt
boto3==1.44.5
botocore==1.44.5
kopf==1.45.2
kubernetes==36.0.3
prometheus-client==0.26.0
pydantic==2.14.3
pydantic-core==2.50.4
pyyaml==6.0.3
EOF

RUN python -m venv /opt/kubetune
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetune ./kubetune
# `.` without extras: the [train] extra (torch and friends) belongs to the trainer image only.
RUN /opt/kubetune/bin/pip install --constraint /tmp/constraints.txt . \
    && /opt/kubetune/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="Kopf operator turning FineTuneJobs into Kubeflow PyTorchJobs" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/kubetune /opt/kubetune

ENV PATH=/opt/kubetune/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# 65532 is the conventional "nonroot" uid (distroless); the chart's securityContext uses the same.
USER 65532:65532
WORKDIR /tmp

ENTRYPOINT ["kubetune"]
CMD ["operator"]
