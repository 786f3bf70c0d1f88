"""Hypothesis strategies: small random networks of the kinds users profile, prune and quantize.

Every network is a :class:`Case`: a model, example inputs (a tensor, or a dict of keyword inputs), and
facts the invariants need (``batch_coupled`` when MACs do not scale with the batch, ``meta_ok`` ...).

Two families, chosen at random:

* images ``(B, C, H, W)``: Conv2d (groups, stride), BatchNorm2d, GroupNorm, ReLU/GELU, MaxPool, then a
  Linear head;
* sequences ``(B, T, E)``: Linear, LayerNorm, ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``
  and ``nn.LSTM`` (batch_first).

Blocks are put into nested containers (Sequential inside ModuleList inside ModuleDict), some modules are
shared (one Linear called twice), and some models take keyword inputs (``model(x=..., scale=...)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

#: applied per test (not loaded globally, so other suites keep their own settings). Reproducible by default;
#: NBOPT_RELIABILITY_EXAMPLES=300 NBOPT_RELIABILITY_RANDOM=1 for a longer, randomized local run.
RELIABLE = settings(
    max_examples=int(os.environ.get("NBOPT_RELIABILITY_EXAMPLES", "20")),
    deadline=None,
    derandomize=not os.environ.get("NBOPT_RELIABILITY_RANDOM"),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class Attention(nn.Module):
    """Self-attention as users write it: ``nn.MultiheadAttention`` on (x, x, x)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class LSTMBlock(nn.Module):
    """An LSTM that keeps the width (returns the output sequence)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class Residual(nn.Module):
    """``x + body(x)``, with ``body`` possibly a shared module."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Bomb(nn.Module):
    """Raises ``exc`` on its ``at``-th call and every call after (the model's forward fails halfway)."""

    def __init__(self, at: int = 3, exc: type[BaseException] = RuntimeError):
        super().__init__()
        self.at, self.exc, self.calls = at, exc, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.at:
            raise self.exc(f"Bomb went off on call {self.calls}")
        return x


class Net(nn.Module):
    """Runs ``body`` (nested containers), then a flatten + Linear head; optional keyword ``scale``."""

    def __init__(self, body: nn.ModuleDict, order: list[tuple[str, int]], head: nn.Module, image: bool):
        super().__init__()
        self.body = body
        self.order = order
        self.head = head
        self.image = image

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        for key, idx in self.order:
            x = self.body[key][idx](x)
        if scale is not None:
            x = x * scale
        x = x.mean(dim=(2, 3)) if self.image else x.mean(dim=1)
        return self.head(x)


@dataclass
class Case:
    model: Net
    batch: int
    shape: tuple[int, ...]          # one sample's shape
    keyword: bool                   # inputs are {"x": ..., "scale": ...}
    kinds: list[str] = field(default_factory=list)

    def inputs(self, batch: int | None = None, seed: int = 0) -> Any:
        g = torch.Generator().manual_seed(seed)
        b = self.batch if batch is None else batch
        x = torch.randn((b, *self.shape), generator=g)
        if self.keyword:
            return {"x": x, "scale": torch.tensor(0.5)}
        return x

    @property
    def batch_coupled(self) -> bool:
        return False  # every block here works per sample (BatchNorm runs in eval mode when profiled)

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"Case(kinds={self.kinds}, shape={self.shape}, batch={self.batch}, keyword={self.keyword})"


def _image_block(draw: Any, c: int) -> tuple[nn.Module, int, str]:
    kind = draw(st.sampled_from(["conv", "dwconv", "bn", "gn", "act", "pool", "convbnrelu"]))
    if kind == "conv":
        cout = draw(st.integers(1, 6))
        k = draw(st.sampled_from([1, 3]))
        return nn.Conv2d(c, cout, k, padding=k // 2, bias=draw(st.booleans())), cout, kind
    if kind == "dwconv":
        return nn.Conv2d(c, c, 3, padding=1, groups=c), c, kind
    if kind == "bn":
        return nn.BatchNorm2d(c), c, kind
    if kind == "gn":
        return nn.GroupNorm(1, c), c, kind
    if kind == "act":
        return draw(st.sampled_from([nn.ReLU, nn.GELU, nn.SiLU, nn.Identity]))(), c, kind
    if kind == "pool":
        return nn.MaxPool2d(3, stride=1, padding=1), c, kind
    cout = draw(st.integers(1, 6))
    return nn.Sequential(nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()), cout, kind


def _seq_block(draw: Any, e: int, heads: int, shared: nn.Module) -> tuple[nn.Module, str]:
    kind = draw(st.sampled_from(["linear", "shared", "ln", "act", "mha", "encoder", "lstm"]))
    if kind == "linear":
        return nn.Linear(e, e), kind
    if kind == "shared":
        return Residual(shared), kind  # the same Linear object wherever it appears
    if kind == "ln":
        return nn.LayerNorm(e), kind
    if kind == "act":
        return draw(st.sampled_from([nn.ReLU, nn.GELU, nn.Tanh]))(), kind
    if kind == "mha":
        return Attention(e, heads), kind
    if kind == "encoder":
        return nn.TransformerEncoderLayer(e, heads, dim_feedforward=2 * e, dropout=0.0, batch_first=True), kind
    return LSTMBlock(e, draw(st.integers(1, 2))), kind


def _containerize(draw: Any, blocks: list[nn.Module]) -> tuple[nn.ModuleDict, list[tuple[str, int]]]:
    """Spread blocks over a ModuleDict of ModuleLists, some wrapped in (nested) Sequentials."""
    body = nn.ModuleDict({"a": nn.ModuleList(), "b": nn.ModuleList()})
    order = []
    for block in blocks:
        key = draw(st.sampled_from(["a", "b"]))
        if draw(st.booleans()):
            block = nn.Sequential(block) if draw(st.booleans()) else nn.Sequential(nn.Sequential(block))
        body[key].append(block)
        order.append((key, len(body[key]) - 1))
    return body, order


@st.composite
def cases(draw: Any, max_blocks: int = 4, family: str | None = None, keyword: bool | None = None) -> Case:
    """A random small network with its inputs (see the module docstring)."""
    fam = family or draw(st.sampled_from(["image", "sequence"]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    n = draw(st.integers(1, max_blocks))
    blocks, kinds = [], []
    if fam == "image":
        c = draw(st.integers(1, 4))
        h, w = draw(st.integers(3, 6)), draw(st.integers(3, 6))
        shape: tuple[int, ...] = (c, h, w)
        width = c
        for _ in range(n):
            block, width, kind = _image_block(draw, width)
            blocks.append(block)
            kinds.append(kind)
    else:
        heads = draw(st.sampled_from([1, 2]))
        e = heads * draw(st.integers(2, 4))
        t = draw(st.integers(1, 4))
        shape = (t, e)
        width = e
        shared = nn.Linear(e, e)
        for _ in range(n):
            block, kind = _seq_block(draw, e, heads, shared)
            blocks.append(block)
            kinds.append(kind)
        if "shared" in kinds and kinds.count("shared") == 1:
            blocks.append(Residual(shared))  # make sure a shared module is really called twice
            kinds.append("shared")
    body, order = _containerize(draw, blocks)
    head = nn.Linear(width, draw(st.integers(1, 3)))
    model = Net(body, order, head, image=fam == "image")
    for m in model.modules():  # random training flags, mixed within one model
        m.training = draw(st.booleans()) if draw(st.integers(0, 3)) == 0 else m.training
    kw = draw(st.booleans()) if keyword is None else keyword
    return Case(model=model, batch=draw(st.integers(1, 3)), shape=shape, keyword=kw, kinds=kinds)


def with_bomb(case: Case, at: int, exc: type[BaseException] = RuntimeError) -> Bomb:
    """Insert a :class:`Bomb` after the first block of ``case.model``; returns it."""
    bomb = Bomb(at, exc)
    model = case.model
    model.body["a"].append(bomb)
    model.order.insert(min(1, len(model.order)), ("a", len(model.body["a"]) - 1))
    return bomb
