"""The chart tests' fixtures (the real Helm binary, `render`), shared with tests/integration/deploy."""

from tests.integration.deploy.conftest import helm, render

__all__ = ["helm", "render"]
