"""Tensor parallel × pipeline parallel × nodes: the layout of one replica across GPUs and nodes.

vLLM serves a model larger than one node by pipeline parallelism across nodes (``--nnodes``,
``--pipeline-parallel-size``) and tensor parallelism inside each node (NVLink). The rules:

- tensor-parallel size (TP) divides the attention heads (and the KV heads divide it or it divides
  them) and stays within a node: it divides the GPUs each node uses;
- pipeline-parallel size (PP) = GPUs / TP, preferably a divisor of the layers (every stage the
  same size); when no split divides them (DeepSeek-V3: 61 layers) vLLM splits them unevenly and
  the largest stage is planned;
- on one node every GPU is in tensor parallel (PP 1), as vLLM recommends;
- a replica spread over several nodes takes whole nodes (``gpusPerNode`` GPUs each): the pods of
  a LeaderWorkerSet are scheduled one per node, and a partly used node only strands GPUs;
- chosen layout: the fewest nodes, then the fewest GPUs, then the largest TP, whose every stage
  fits weights + runtime + the KV cache of one sequence of ``maxModelLen`` within vLLM's
  ``gpu_memory_utilization`` (0.9) of each GPU.

A stage is planned as a model with ``ceil(layers / PP)`` layers, its share of the decoder weights
and the larger of the embeddings and ``lm_head`` (the first stage holds one, the last the other).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from modelyard.planner.config import Cfg
from modelyard.planner.errors import PlanError
from modelyard.planner.fit import Ask, Fit, fit_cpu, fit_for, tp_problem
from modelyard.planner.layout import Layout

DEFAULT_GPUS_PER_NODE = 8
MAX_NODES = 16          # a layout needing more nodes is reported, not planned
COUNT_NODES_UP_TO = 4096  # how far "it would need N nodes" looks


@dataclass(frozen=True)
class Parallel:
    tp: int
    pp: int
    nodes: int
    gpus_per_node: int  # GPUs each node (pod) uses; 0 on CPU
    even: bool = True   # PP divides the layers

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def describe(self) -> str:
        text = f"TP {self.tp} × PP {self.pp}"
        if self.nodes > 1:
            text += f" on {self.nodes} nodes × {self.gpus_per_node} GPUs" if self.gpus_per_node \
                else f" on {self.nodes} nodes (CPU)"
        return text


def check_gpus_per_node(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise PlanError(f"gpusPerNode: {value!r} must be a whole number from 1 to 64")
    return value


def check_nodes(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise PlanError(f"nodes: {value!r} must be a whole number from 1 to 64")
    return value


def stage_ask(a: Ask, lay: Layout, pp: int, tp: int) -> Ask:
    """What one GPU of a PP × TP layout holds, as an Ask for the single-stage fit."""
    if pp == 1:
        return replace(a, gpus=tp)
    layers = a.cfg.layers
    per_stage = math.ceil(layers / pp)
    unit = 4 if a.act_dtype == 4 else 2  # embeddings and lm_head stay 16-bit (32 when float32)
    embed = lay.embedding * unit
    head = (lay.lm_head or lay.embedding) * unit
    body = max(a.weight_bytes - embed - lay.lm_head * unit, 0)
    weights = math.ceil(body * per_stage / layers) + max(embed, head)
    cfg = Cfg({**a.cfg.data, "num_hidden_layers": per_stage}, a.cfg.source)
    return replace(a, cfg=cfg, weight_bytes=weights, gpus=tp,
                   lora_bytes=math.ceil(a.lora_bytes * per_stage / layers))


def splits(c: Cfg, per_node: int, nodes: int) -> list[Parallel]:
    """Valid TP × PP for ``nodes`` nodes of ``per_node`` GPUs, best first (even PP, then larger TP).

    On one node every GPU is in tensor parallel (no pipeline bubbles; NVLink between them)."""
    if nodes == 1:
        return [Parallel(per_node, 1, 1, per_node)] if per_node == 1 or not tp_problem(c, per_node) else []
    total = per_node * nodes
    out = []
    for tp in range(per_node, 0, -1):
        if per_node % tp or (tp > 1 and tp_problem(c, tp)):
            continue
        pp = total // tp
        if pp > c.layers:
            continue
        out.append(Parallel(tp, pp, nodes, per_node, even=c.layers % pp == 0))
    return sorted(out, key=lambda p: (not p.even, -p.tp))


FitFn = Callable[[Parallel], Fit]


def fitter(engine: str, a: Ask, lay: Layout) -> FitFn:
    def fit(par: Parallel) -> Fit:
        if not par.gpus_per_node:  # CPU: one process per node, one stage each
            return fit_cpu(stage_ask(a, lay, par.pp, 1), engine)
        return fit_for(engine, stage_ask(a, lay, par.pp, par.tp))
    return fit


def search(c: Cfg, fit: FitFn, gpus_per_node: int, nodes: int | None = None,
           max_nodes: int = MAX_NODES) -> tuple[Parallel, Fit] | None:
    """The fewest nodes, then the fewest GPUs, whose layout fits; None when none up to max_nodes."""
    for n in ([nodes] if nodes else range(1, max_nodes + 1)):
        per_node = range(1, gpus_per_node + 1) if n == 1 else [gpus_per_node]
        for g in per_node:
            for par in splits(c, g, n):
                result = fit(par)
                if result.fits:
                    return par, result
    return None


def nodes_needed(c: Cfg, fit: FitFn, gpus_per_node: int) -> tuple[Parallel, Fit] | None:
    """For a model that fits on no allowed layout: the smallest node count that would hold it."""
    n = MAX_NODES + 1
    while n <= COUNT_NODES_UP_TO:
        found = search(c, fit, gpus_per_node, nodes=n)
        if found:
            return found
        n += 1 if n < 64 else n // 8
    return None


def for_gpus(c: Cfg, gpus: int, gpus_per_node: int, nodes: int | None) -> Parallel | str:
    """The layout for an explicit GPU count (spec.gpus, total per replica): a Parallel, or why not."""
    if gpus == 0:
        n = nodes or 1
        if n > c.layers:
            return f"nodes: {n} pipeline stages are more than the {c.layers} layers"
        return Parallel(1, n, n, 0, even=c.layers % n == 0)
    n = nodes or -(-gpus // gpus_per_node)
    if gpus % n:
        return (f"gpus: {gpus} GPUs cannot be spread evenly over {n} nodes; use a multiple of {n} "
                f"(e.g. {n * min(gpus_per_node, -(-gpus // n))})")
    per_node = gpus // n
    if per_node > gpus_per_node:
        return (f"nodes: {gpus} GPUs on {n} nodes is {per_node} per node, more than gpusPerNode "
                f"{gpus_per_node}; use nodes ≥ {-(-gpus // gpus_per_node)}")
    if n == 1:
        return Parallel(gpus, 1, 1, gpus)  # one node: every GPU in tensor parallel (as before)
    found = splits(c, per_node, n)
    if not found:
        return (f"gpus: no tensor-parallel size divides both the {per_node} GPUs per node and the "
                f"{c.heads} attention heads (with {c.kv_heads} KV heads)")
    return found[0]


def explain(par: Parallel, c: Cfg, searched: bool) -> str:
    """Why this layout, in words."""
    parts = []
    if searched:
        parts.append("the fewest nodes, then the fewest GPUs, that hold the weights and the KV cache "
                     "for maxModelLen")
    if par.tp > 1:
        parts.append(f"TP {par.tp} divides the {c.heads} attention heads and stays within a node")
    if par.pp > 1:
        stage = math.ceil(c.layers / par.pp)
        parts.append(f"PP {par.pp}: {c.layers} layers in stages of {stage}" if par.even else
                     f"PP {par.pp}: no split of the {c.layers} layers is even; vLLM splits them "
                     f"unevenly and the largest stage ({stage} layers) is planned")
    if par.nodes > 1:
        parts.append(f"{par.nodes} nodes, one LeaderWorkerSet pod each")
    return par.describe() + (": " + "; ".join(parts) if parts else "")
