"""kopf's diff-base storage, made free for an operator of event handlers only.

On every watch event kopf builds the object's "essence" (a deep copy of the body without its
status) and reads the last-handled one, to diff them for ``on.create/update/delete`` handlers.
modelyard registers ``on.event`` handlers only (reconcile is level-based and reads the cache), so
nothing ever reads that diff: building it cost a deep copy of every Model, Job, PVC and Pod per
event — about a tenth of the operator's CPU in the operator benchmark. ``install`` keeps kopf's
own storage if a resource-changing handler is ever registered.
"""
from __future__ import annotations

import kopf


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """An empty essence, never stored: no changing handlers, nothing to diff."""

    def build(self, *, body, extra_fields=None):
        return {}

    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence) -> None:
        return None


def has_changing_handlers(registry) -> bool:
    return bool(registry._changing.get_all_handlers())  # kopf has no public accessor for this


def install(settings: kopf.OperatorSettings, registry, prefix: str) -> None:
    """``NoDiffBase`` when only event handlers are registered; kopf's annotations otherwise."""
    if has_changing_handlers(registry):
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    else:
        settings.persistence.diffbase_storage = NoDiffBase(prefix=prefix)
