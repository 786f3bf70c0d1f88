"""Per-layer sensitivity: each Conv/Linear weight quantized alone at each bit width, metric drop per cell.

Without ``evaluate`` the metric is measured on ``calib`` against the fp32 outputs, and the fp32
activations are cached: a layer's trial re-runs only the part of the (torch.fx traced) network that
depends on that layer. ``method="naive"`` re-runs the whole copied model per trial (same numbers).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import pandas as pd
import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..errors import NboptError
from ..inputs import call, check_module
from ..model_state import working_copy
from .calibration import calibration_inputs
from .metrics import fidelity
from .observers import QParams, fake_quant
from .options import QuantOptions, check_bits, quantizable_layers
from .simulate import fold_batchnorm, weight_qparams


class ActivationCache:
    """fp32 values of every node of a traced model for each calibration batch."""

    def __init__(self, gm: fx.GraphModule, inputs: list[Any]):
        self.gm, self.nodes = gm, list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.envs = [self._run(x) for x in inputs]
        self.outputs = [env[self.nodes[-1]] for env in self.envs]

    def _run(self, x: Any) -> dict[fx.Node, Any]:
        interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        args = x if isinstance(x, (tuple, list)) else (x,)
        with torch.no_grad():
            interp.run(*args)
        env = dict(interp.env)
        env[self.nodes[-1]] = interp.run_node(self.nodes[-1]) if self.nodes[-1] not in env else env[self.nodes[-1]]
        return env

    def downstream(self, target: str) -> list[fx.Node]:
        """The call_module node for ``target`` and every node that depends on it, in execution order."""
        start = [n for n in self.nodes if n.op == "call_module" and n.target == target]
        seen, stack = set(start), list(start)
        while stack:
            for user in stack.pop().users:
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return sorted(seen, key=self.order.get)

    def rerun(self, nodes: list[fx.Node]) -> list[Any]:
        """Outputs with ``nodes`` recomputed (the rest read from the cache), one per batch."""
        outs = []
        with torch.no_grad():
            for env in self.envs:
                interp = fx.Interpreter(self.gm, garbage_collect_values=False)
                interp.env = dict(env)
                for node in nodes:
                    interp.env[node] = interp.run_node(node)
                outs.append(interp.env[self.nodes[-1]])
        return outs


def _swap(layer: nn.Module, qp: QParams) -> torch.Tensor:
    original = layer.weight.data
    layer.weight.data = fake_quant(original, qp)
    return original


def _trial_outputs_naive(folded: nn.Module, name: str, qp: QParams, inputs: list[Any]) -> list[Any]:
    """Reference method: copy the model, quantize one layer, run every batch through all of it."""
    model = working_copy(folded)
    _swap(model.get_submodule(name), qp)
    with torch.no_grad():
        return [call(model, x) for x in inputs]


def _metrics(ref: list[Any], out: list[Any]) -> dict[str, float]:
    f = fidelity(ref, out)
    return {"drop": 1.0 - f.get("top1_agreement", f["cosine"]), "sqnr": f["sqnr_db"]}


def sensitivity(model: nn.Module, calib: Any, evaluate: Callable[[nn.Module], float] | None = None,
                bits: Iterable[int] = (8, 6, 4), *, granularity: str = "per_channel", symmetric: bool = True,
                observer: str = "minmax", method: str = "cached", progress: bool = True) -> pd.DataFrame:
    """DataFrame, one row per Conv/Linear layer: ``drop_{b}bit`` (metric drop) and ``sqnr_{b}bit`` (dB).

    Weights only (activations stay float), one layer at a time. ``evaluate(model) -> accuracy`` makes the
    drop an accuracy drop; otherwise it is 1 - top-1 agreement with fp32 on ``calib`` (1 - cosine for
    non-classifier outputs), and ``sqnr`` is the output SQNR vs fp32.
    """
    check_module(model)
    bits = sorted({int(b) for b in bits} if not isinstance(bits, int) else {bits}, reverse=True)
    for b in bits:
        check_bits(b, "bits")
    if method not in ("cached", "naive"):
        raise NboptError(f"method={method!r} must be 'cached' or 'naive'.")
    opts = QuantOptions(granularity=granularity, symmetric=symmetric, observer=observer, act_bits=None).validate()
    inputs = list(calibration_inputs(calib))
    if not inputs:
        raise NboptError("the calibration data is empty; pass at least one batch.")
    folded = fold_batchnorm(working_copy(model))
    layers = quantizable_layers(folded)
    trial, ref, used = _trial_runner(folded, inputs, evaluate, method)
    base = evaluate(folded) if evaluate else None
    rows = []
    for name in tqdm(layers, desc="sensitivity", disable=not progress, leave=False):
        row = {"layer": name, "type": type(layers[name]).__name__, "params": layers[name].weight.numel()}
        for b in bits:
            m = trial(name, weight_qparams(layers[name].weight.detach(), b, opts))
            row[f"drop_{b}bit"] = base - m if evaluate else _metrics(ref, m)["drop"]
            row[f"sqnr_{b}bit"] = float("nan") if evaluate else _metrics(ref, m)["sqnr"]
        rows.append(row)
    df = pd.DataFrame(rows).set_index("layer")
    df.attrs.update(bits=bits, metric="accuracy drop" if evaluate else "1 - top-1 agreement with fp32",
                    method=used, options=dict(granularity=granularity, symmetric=symmetric, observer=observer))
    return df


def _trial_runner(folded: nn.Module, inputs: list[Any], evaluate: Callable | None, method: str):
    """A function (layer name, qparams) -> outputs per batch (or accuracy), the fp32 reference, method used."""
    if evaluate is not None:
        def run_eval(name: str, qp: QParams) -> float:
            layer = folded.get_submodule(name)
            original = _swap(layer, qp)
            try:
                return float(evaluate(folded))
            finally:
                layer.weight.data = original
        return run_eval, None, "evaluate (black box: no caching)"
    with torch.no_grad():
        ref = [call(folded, x) for x in inputs]
    if method == "naive":
        return (lambda name, qp: _trial_outputs_naive(folded, name, qp, inputs)), ref, "naive"
    try:
        gm = folded if isinstance(folded, fx.GraphModule) else fx.symbolic_trace(folded)
        cache = ActivationCache(gm, inputs)
    except Exception:  # noqa: BLE001 - untraceable: fall back to full re-evaluation
        return (lambda name, qp: _trial_outputs_naive(folded, name, qp, inputs)), ref, "naive (not traceable)"

    def run_cached(name: str, qp: QParams) -> list[Any]:
        layer = gm.get_submodule(name)
        original = _swap(layer, qp)
        try:
            return cache.rerun(cache.downstream(name))
        finally:
            layer.weight.data = original
    return run_cached, cache.outputs, "cached"
