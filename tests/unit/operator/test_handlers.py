"""The operator's handlers as Kopf registers them."""

from __future__ import annotations

import kopf


def test_no_handler_puts_a_finalizer_on_finetunejobs() -> None:
    """Nothing outside the cluster is cleaned up, so no FineTuneJob may wait on the operator to be deleted:
    Kopf's timers ask for a finalizer by default, ours are registered without (a Kopf upgrade that
    breaks `without_finalizer` fails here)."""
    import kubetune.operator.handlers as handlers

    registry = kopf.get_default_registry()
    ours = (handlers.retry_recreation, handlers.recheck_waiting)
    timers = [h for h in registry._spawning.get_all_handlers() if h.fn in ours]
    assert len(timers) == 2
    assert not any(h.requires_finalizer for h in registry._spawning.get_all_handlers())
    assert not any(h.requires_finalizer for h in registry._changing.get_all_handlers())
