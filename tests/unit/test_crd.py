"""The CRD in crds/ is generated from modelyard.api and is a valid structural schema."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from modelyard.api.crd import build_crd, render

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "models.modelyard.io.yaml"


def test_crd_file_is_up_to_date():
    assert CRD_FILE.read_text() == render(), "crds/ is stale: run `make crds`"


def _walk(schema: dict, path: str):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_described():
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root["properties"]["spec"], "spec"):
        if node.get("x-kubernetes-int-or-string"):
            assert [a.get("type") for a in node["anyOf"]] == ["integer", "string"], path
            continue
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "$ref" not in node and "anyOf" not in node, path
        if path.count("{}") == 0 and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description (kubectl explain needs one)"


def test_enums_defaults_and_rules_present():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["precision"]["enum"] == ["auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4"]
    assert spec["properties"]["engine"]["default"] == "auto"
    assert spec["properties"]["serving"]["default"] == {}
    rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "exists_one" in rules and "onnx" in rules
    assert spec["properties"]["adapters"]["maxItems"] == 32  # bounds CEL cost


def test_printer_columns_and_status_subresource():
    version = build_crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Phase", "Engine", "Precision", "GPUs", "Layout", "VRAM/GPU", "Endpoint", "Age"]
    assert version["subresources"] == {"status": {}}


def test_schema_accepts_a_full_example_and_rejects_bad_enum():
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    doc = yaml.safe_load((ROOT / "examples" / "llama-8b.yaml").read_text())
    jsonschema.validate(doc, root)
    doc["spec"]["precision"] = "int3"
    try:
        jsonschema.validate(doc, root)
    except jsonschema.ValidationError as exc:
        assert list(exc.absolute_path) == ["spec", "precision"]
    else:
        raise AssertionError("int3 accepted")
