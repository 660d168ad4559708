"""The operator skips kopf's diff-base (a deep copy per event) only while no handler needs it."""
from __future__ import annotations

import kopf

from modelyard.operator import kopf_storage


def test_event_handlers_only_get_the_free_diffbase():
    import modelyard.operator.handlers  # noqa: F401  (registers the operator's handlers)

    registry = kopf.get_default_registry()
    assert not kopf_storage.has_changing_handlers(registry)
    settings = kopf.OperatorSettings()
    kopf_storage.install(settings, registry, prefix="modelyard.io")
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, kopf_storage.NoDiffBase)
    body = kopf.Body({"metadata": {"name": "m"}, "spec": {"source": {"uri": "hf://a/b"}}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


def test_a_changing_handler_brings_kopfs_own_storage_back():
    registry = kopf.OperatorRegistry()

    @kopf.on.update("example.com", "v1", "widgets", registry=registry)
    def changed(**_):
        pass

    settings = kopf.OperatorSettings()
    kopf_storage.install(settings, registry, prefix="modelyard.io")
    storage = settings.persistence.diffbase_storage
    assert type(storage) is kopf.AnnotationsDiffBaseStorage
    body = kopf.Body({"metadata": {"name": "w"}, "spec": {"size": 1}})
    assert storage.build(body=body) == {"spec": {"size": 1}}
