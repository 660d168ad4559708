"""Small pieces of the onnxruntime engine without a model: the export folder check (a real ONNX
graph with external weights written by `onnx`) and the text stream's stop-string handling."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelyard.runtime.engines.onnxruntime_text import TextStream
from modelyard.runtime.onnx_folder import OnnxFolderError, check_folder


def export_folder(path):
    path.mkdir()
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    onnx.save_model(helper.make_model(graph), str(path / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    (path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"},
                                                                  "context_length": 2048, "type": "llama"}}))
    (path / "tokenizer.json").write_text("{}")
    return path


def test_a_complete_folder_is_summarised(tmp_path):
    info = check_folder(export_folder(tmp_path / "ok"))
    assert info["graph"] == "model.onnx" and info["contextLength"] == 2048 and info["bytes"] > 4096 * 4


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "model.onnx.data").unlink(), ["model.onnx.data", "missing"]),
    (lambda d: (d / "model.onnx.data").write_bytes(b"x" * 100), ["truncated", "100 bytes", "16384"]),
    (lambda d: (d / "tokenizer.json").unlink(), ["no tokenizer"]),
    (lambda d: (d / "model.onnx").unlink(), ["names the graph model.onnx"]),
    (lambda d: (d / "genai_config.json").unlink(), ["not an onnxruntime-genai export", "modelyard convert"]),
    (lambda d: (d / "genai_config.json").write_text("{}"), ["model.decoder.filename"]),
])
def test_an_incomplete_folder_says_what_is_missing(tmp_path, damage, words):
    folder = export_folder(tmp_path / "bad")
    damage(folder)
    with pytest.raises(OnnxFolderError) as err:
        check_folder(folder)
    assert err.value.reason == "IncompleteOnnxFolder"
    assert all(w in err.value.message for w in words), err.value.message


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def feed(stream: TextStream, text: str) -> list[str]:
    return [p for p in (stream.push(ord(c)) for c in text)] + [stream.flush()]


def test_text_is_held_back_while_it_could_start_a_stop_string():
    stream = TextStream(CharTokenizer(), ["END"])
    pieces = feed(stream, "abcENxyENDzz")
    assert "".join(pieces) == "abcENxy" and stream.stopped
    assert pieces[3] == "" and pieces[4] == ""  # "E", "EN" held back until they cannot be "END"


def test_without_stop_strings_every_token_is_sent_at_once():
    stream = TextStream(CharTokenizer(), [])
    assert feed(stream, "hello")[:5] == list("hello") and not stream.stopped
