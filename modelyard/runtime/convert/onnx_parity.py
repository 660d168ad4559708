"""The correctness gate after every ONNX export: greedy decoding of the export (onnxruntime-genai)
against transformers on the source checkpoint, on a few prompts.

Silent configuration drift between library versions (a rope setting read from the wrong key, a
tied embedding exported untied) produces a graph that runs and says the wrong thing; this is what
catches it. Two measures per prompt:

* ``exact``: the export's greedy tokens equal transformers' greedy tokens (float32 exports must).
* ``agreement``: the share of the export's tokens that are transformers' own top-1 choice given
  the same prefix (teacher forcing on the export's text). Other precisions change the arithmetic
  or the weights, so their text may fork; they must keep the mean ``agreement`` at or above
  ``TOLERANCE[precision]``. On a random tiny model int4 keeps about 0.3 (chance is 1/vocab), so
  the int4 bound only proves the graph computes the model; what proves the graph reads the config
  right is the float32 twin that ``onnx_export`` builds from the same checkpoint and holds to
  ``exact`` before it accepts any other precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelyard.runtime.errors import ConvertError

PROMPTS = (
    "The operator downloads the weights and",
    "Hello world! How are you",
    "modelyard deploys models declaratively on kubernetes. The quick brown fox",
    "0123456789",
)
NEW_TOKENS = 24
EXACT = ("float32",)
TOLERANCE = {"float16": 0.9, "bfloat16": 0.8, "int8": 0.5, "int4": 0.2}
TORCH_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass
class PromptResult:
    prompt: str
    reference: list[int]
    exported: list[int]
    agreement: float

    @property
    def exact(self) -> bool:
        return self.reference == self.exported

    def first_difference(self) -> int:
        return next((i for i, (a, b) in enumerate(zip(self.reference, self.exported)) if a != b),
                    min(len(self.reference), len(self.exported)))


def _reference(hf_dir: Path, precision: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, TORCH_DTYPE.get(precision, "float32"))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(str(hf_dir))


def _greedy_hf(model, ids: list[int]) -> list[int]:
    import torch

    with torch.inference_mode():
        x = torch.tensor([ids])
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _top1_agreement(model, ids: list[int], generated: list[int]) -> float:
    import torch

    if not generated:
        return 0.0
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids + generated])).logits[0]
    choices = logits[len(ids) - 1: len(ids) - 1 + len(generated)].argmax(-1).tolist()
    return sum(a == b for a, b in zip(choices, generated)) / len(generated)


def _greedy_ort(model, ids: list[int]) -> list[int]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + NEW_TOKENS, min_length=len(ids) + NEW_TOKENS)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done() and len(out) < NEW_TOKENS:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def compare(hf_dir: Path, onnx_dir: Path, precision: str) -> list[PromptResult]:
    import onnxruntime_genai as og

    model, tokenizer = _reference(hf_dir, precision)
    exported = og.Model(str(onnx_dir))
    results = []
    for prompt in PROMPTS:
        ids = list(tokenizer(prompt)["input_ids"])
        ort = _greedy_ort(exported, ids)
        results.append(PromptResult(prompt, _greedy_hf(model, ids), ort, _top1_agreement(model, ids, ort)))
    return results


def gate(hf_dir: Path, onnx_dir: Path, precision: str, log) -> dict:
    """Compare, then pass (the report, recorded in the provenance) or raise ConvertError("ParityFailed")."""
    results = compare(hf_dir, onnx_dir, precision)
    agreement = sum(r.agreement for r in results) / len(results)
    report = {"prompts": len(results), "newTokens": NEW_TOKENS, "exact": sum(r.exact for r in results),
              "agreement": round(agreement, 4),
              "rule": "identical greedy tokens" if precision in EXACT
              else f"mean top-1 agreement >= {TOLERANCE[precision]}"}
    log(f"parity vs transformers: {report['exact']}/{len(results)} prompts identical, "
        f"top-1 agreement {agreement:.2f} ({report['rule']})")
    if precision in EXACT:
        bad = [r for r in results if not r.exact]
        if bad:
            r = bad[0]
            raise ConvertError("ParityFailed", (
                f"the {precision} ONNX export drifts from transformers: {len(bad)}/{len(results)} prompts differ; "
                f"for {r.prompt!r} the tokens differ from position {r.first_difference()} "
                f"(transformers {r.reference[:8]}..., export {r.exported[:8]}...). The exporter misread the "
                "checkpoint's config (e.g. rope settings) or does not support it; the export was discarded"))
    elif agreement < TOLERANCE[precision]:
        raise ConvertError("ParityFailed", (
            f"the {precision} ONNX export agrees with transformers' top-1 choice on only {agreement:.0%} of "
            f"tokens (at least {TOLERANCE[precision]:.0%} is required); the export was discarded. Try float32"))
    return report
