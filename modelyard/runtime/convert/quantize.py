"""int8 / int4 / fp8 for vLLM: llmcompressor ``oneshot`` → compressed-tensors checkpoint.

Without ``--calibration-dataset`` the recipe is calibration-free ``QuantizationModifier``
(round-to-nearest weights, dynamic activations). With one, ``GPTQModifier`` calibrates on it: a
local ``.jsonl`` (one ``{"text": ...}`` per line) or ``.txt`` (one sample per line) file, or a
dataset name that ``datasets`` can load offline.
"""
from __future__ import annotations

import json
from pathlib import Path

from modelyard.runtime.errors import ConvertError

SCHEMES = ("W8A8", "W4A16", "FP8_DYNAMIC")
DEFAULT_SCHEME = {"int8": "W8A8", "int4": "W4A16", "fp8": "FP8_DYNAMIC"}
QUANT_PRECISIONS = tuple(DEFAULT_SCHEME)
CALIBRATION_SAMPLES = 64
CALIBRATION_SEQ_LEN = 256


def recipe_for(precision: str, scheme: str | None, calibration: str | None) -> dict:
    scheme = scheme or DEFAULT_SCHEME[precision]
    if scheme not in SCHEMES:
        raise ConvertError("BadScheme", f"--scheme {scheme} is not supported; use one of {', '.join(SCHEMES)}")
    if calibration and scheme == "FP8_DYNAMIC":
        raise ConvertError("BadScheme", "--calibration-dataset needs a GPTQ scheme (W8A8 or W4A16); FP8_DYNAMIC is calibration-free")
    return {"modifier": "GPTQModifier" if calibration else "QuantizationModifier", "scheme": scheme,
            "targets": "Linear", "ignore": ["lm_head"]}


def quantize(model, tokenizer, recipe: dict, out: Path, calibration: str | None, max_shard_bytes: int) -> None:
    """Quantize ``model`` in place and save the compressed checkpoint (and tokenizer) to ``out``."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    cls = GPTQModifier if recipe["modifier"] == "GPTQModifier" else QuantizationModifier
    modifier = cls(targets=recipe["targets"], scheme=recipe["scheme"], ignore=list(recipe["ignore"]))
    kwargs = {}
    if calibration:
        if tokenizer is None:
            raise ConvertError("MissingTokenizer", "GPTQ calibration needs the model's tokenizer files next to the weights")
        kwargs = dict(dataset=_calibration(calibration, tokenizer), max_seq_length=CALIBRATION_SEQ_LEN,
                      num_calibration_samples=CALIBRATION_SAMPLES)
    try:
        oneshot(model=model, recipe=modifier, **kwargs)
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError("QuantizationFailed", f"llmcompressor {recipe['modifier']} {recipe['scheme']} failed: {type(exc).__name__}: {exc}") from None
    model.save_pretrained(str(out), save_compressed=True, max_shard_size=max_shard_bytes)


def _calibration(name: str, tokenizer):
    from datasets import Dataset, load_dataset

    path = Path(name)
    if path.is_file():
        texts = _read_texts(path)
    else:
        try:
            ds = load_dataset(name, split="train")
        except Exception as exc:
            raise ConvertError("BadCalibrationDataset", f"--calibration-dataset {name}: not a local .jsonl/.txt file and datasets cannot load it: {exc}") from None
        texts = [r["text"] for r in ds.select(range(min(CALIBRATION_SAMPLES, len(ds))))]
    if not texts:
        raise ConvertError("BadCalibrationDataset", f"--calibration-dataset {name} holds no text samples")
    enc = [tokenizer(t, truncation=True, max_length=CALIBRATION_SEQ_LEN, add_special_tokens=False) for t in texts[:CALIBRATION_SAMPLES]]
    return Dataset.from_list([{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in enc])


def _read_texts(path: Path) -> list[str]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for i, ln in enumerate(lines, 1):
        try:
            texts.append(json.loads(ln)["text"])
        except (ValueError, KeyError, TypeError):
            raise ConvertError("BadCalibrationDataset", f"{path.name} line {i}: expected a JSON object with a 'text' field") from None
    return texts
