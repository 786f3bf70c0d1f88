"""The search space: what a trial may change (structured pruning per channel group, precision and int8 backend,
per-layer weight bits, recovery), seeded from the profiler and nbopt.sensitivity; a trial's choices -> a Config."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..errors import InputError

QUANT = ("fp32", "int8", "mixed")  # fp32 kernels; real int8 (a backend); simulated per-layer bits (accuracy, size)
RECOVER = ("none", "finetune", "distill")
RUNTIMES = ("torch", "onnxruntime")  # quant="fp32": eager torch, or the exported ONNX graph run by onnxruntime
DOMINANT_SHARE = 0.15  # a channel group whose layers do at least this share of the MACs may be pruned harder


@dataclass
class Config:
    """One compressed variant: build it with :func:`nbopt.autosearch.build.build_config`."""

    amount: float = 0.0                                   # structured, global, for groups without their own
    overrides: dict[str, float] = field(default_factory=dict)  # channel-group root -> its own amount
    quant: str = "fp32"
    backend: str = "onnxruntime"
    bits: dict[str, int] = field(default_factory=dict)    # quant="mixed": layer -> weight bits (others 8)
    recover: str = "none"
    runtime: str = "torch"                                # quant="fp32": what runs the fp32 model (RUNTIMES)
    epochs: int | None = None                             # recovery epochs (None: the search's recover_epochs)
    lr: float | None = None                               # recovery learning rate (None: recover()'s default)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchSpace:
    """Ranges a trial samples from. ``groups``: channel-group root -> largest amount; ``amount_max``: the
    global amount for the other groups; ``bit_layers``: layer -> allowed weight bits (quant="mixed");
    ``quant``/``backends``/``recover``: the categorical choices; ``runtimes``: what runs a quant="fp32" trial
    (eager "torch", or "onnxruntime": the exported fp32 graph, less per-call overhead at small batches);
    ``epochs`` / ``lrs``: recovery epochs and learning rates to choose from (empty: the search's
    ``recover_epochs``, recover()'s default rate). ``step``: the pruning-amount grid."""

    groups: dict[str, float] = field(default_factory=dict)
    amount_max: float = 0.6
    quant: tuple[str, ...] = ("fp32", "int8")
    backends: tuple[str, ...] = ("onnxruntime",)
    bit_layers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    recover: tuple[str, ...] = ("none",)
    step: float = 0.05
    runtimes: tuple[str, ...] = ("torch",)
    epochs: tuple[int, ...] = ()
    lrs: tuple[float, ...] = ()
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = ([q for q in self.quant if q not in QUANT] + [r for r in self.recover if r not in RECOVER]
               + [r for r in self.runtimes if r not in RUNTIMES])
        if bad or not self.runtimes:
            raise InputError(f"unknown space choice(s) {bad or ['runtimes=()']}; quant from {QUANT}, recover from "
                             f"{RECOVER}, runtimes (one or more) from {RUNTIMES}")
        if any(not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in self.epochs):
            raise InputError(f"space: recovery epochs must be positive ints, got {self.epochs!r}")
        if any(not isinstance(r, float) or not r > 0 for r in self.lrs):
            raise InputError(f"space: recovery learning rates (lrs) must be positive floats such as 1e-3, got "
                             f"{self.lrs!r}")
        for name, top in {"amount_max": self.amount_max, **self.groups}.items():
            if not 0 <= top < 1:
                raise InputError(f"space: the largest pruning amount of {name!r} must be in [0, 1), got {top!r}")

    def suggest(self, trial: Any) -> Config:
        """The trial's Config (Optuna's ``suggest_*``; parameter names are stable, so studies resume)."""
        cfg = Config(amount=trial.suggest_float("amount", 0.0, self.amount_max, step=self.step) if self.amount_max else 0.0)
        for root, top in self.groups.items():
            cfg.overrides[root] = trial.suggest_float(f"prune:{root}", 0.0, top, step=self.step)
        cfg.quant = trial.suggest_categorical("quant", list(self.quant))
        if cfg.quant == "int8":
            cfg.backend = trial.suggest_categorical("backend", list(self.backends))
        if cfg.quant == "fp32" and self.runtimes != ("torch",):  # the old spaces' trials sample what they did
            cfg.runtime = trial.suggest_categorical("runtime", list(self.runtimes))
        if cfg.quant == "mixed":
            cfg.bits = {n: trial.suggest_categorical(f"bits:{n}", list(b)) for n, b in self.bit_layers.items()}
        cfg.recover = trial.suggest_categorical("recover", list(self.recover))
        if cfg.recover != "none" and self.epochs:
            cfg.epochs = trial.suggest_categorical("epochs", list(self.epochs))
        if cfg.recover != "none" and self.lrs:
            cfg.lr = trial.suggest_categorical("lr", list(self.lrs))
        return cfg

    def uncompressed(self) -> dict[str, Any]:
        """Optuna params of the least compressed point (no pruning, the first precision, no recovery): a new
        study's first trial, so the front always starts from a measured, feasible baseline."""
        params: dict[str, Any] = {"amount": 0.0} if self.amount_max else {}
        params.update({f"prune:{r}": 0.0 for r in self.groups})
        params.update(quant=self.quant[0], recover=self.recover[0])
        if self.quant[0] == "int8":
            params["backend"] = self.backends[0]
        if self.quant[0] == "fp32" and self.runtimes != ("torch",):
            params["runtime"] = self.runtimes[0]
        if self.recover[0] != "none" and self.epochs:
            params["epochs"] = self.epochs[0]
        if self.recover[0] != "none" and self.lrs:
            params["lr"] = self.lrs[0]
        if self.quant[0] == "mixed":
            params.update({f"bits:{n}": max(b) for n, b in self.bit_layers.items()})
        return params

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("notes")
        for key, default in (("runtimes", ("torch",)), ("epochs", ()), ("lrs", ())):  # older spaces lack them:
            if tuple(d[key]) == default:                                                # their studies resume
                d.pop(key)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def config_from_params(params: dict[str, Any]) -> Config:
    """A finished trial's Config from its stored Optuna params (what ``SearchResult.build`` rebuilds); params of
    older studies (no ``runtime``, ``epochs``, ``lr``) read as eager torch and the search's recovery setting."""
    epochs, lr = params.get("epochs"), params.get("lr")
    cfg = Config(amount=float(params.get("amount", 0.0)), quant=params.get("quant", "fp32"),
                 backend=params.get("backend", "onnxruntime"), recover=params.get("recover", "none"),
                 runtime=params.get("runtime", "torch"), epochs=None if epochs is None else int(epochs),
                 lr=None if lr is None else float(lr))
    for key, value in params.items():
        if key.startswith("prune:"):
            cfg.overrides[key[6:]] = float(value)
        elif key.startswith("bits:"):
            cfg.bits[key[5:]] = int(value)
    return cfg


def default_space(model: nn.Module, example_input: Any, calib: Any, *, max_groups: int = 3,
                  mixed_precision: bool = True, recover: bool = False, sensitivity_bits: int = 4,
                  epochs: tuple[int, ...] = ()) -> SearchSpace:
    """A space seeded from the model: the ``max_groups`` channel groups doing the most MACs (the profiler's
    count) get their own pruning amount (up to 0.8 when they do >= 15% of the MACs, else 0.6), the rest share
    one; with ``mixed_precision`` each Conv/Linear layer gets weight bits {4, 6, 8}, except the more sensitive
    half (lowest output SQNR in ``nbopt.sensitivity`` at ``sensitivity_bits``), which keep {8}; fp32 runs in
    eager torch or onnxruntime. ``recover`` adds recovery choices (``epochs``: how long, e.g. (2, 4, 8); learning
    rate 1e-3 or 3e-3: the higher one measured better for distilling heavily pruned nets) and,
    since recovery wins back what heavy pruning loses, deeper amounts (0.9 for the dominant groups, 0.8 else)."""
    from ..profiling import profile
    from ..pruning import Pruner
    from ..quantization import sensitivity

    pruner = Pruner(model, example_input, progress=False)
    groups = pruner._prepare_structured()  # noqa: SLF001 - the channel groups the Pruner will cut
    table = profile(model, example_input, latency=False).table
    total = float(table["macs"].sum()) or 1.0
    share = {g.root: _group_macs(g, table) / total for g in groups}
    top = sorted(share, key=share.get, reverse=True)[:max_groups]
    deep, other = (0.9, 0.8) if recover else (0.8, 0.6)
    space = SearchSpace(groups={r: (deep if share[r] >= DOMINANT_SHARE else other) for r in top}, amount_max=other,
                        recover=RECOVER if recover else ("none",), runtimes=RUNTIMES,
                        epochs=tuple(epochs) if recover else (), lrs=(1e-3, 3e-3) if recover else ())
    space.notes.append("own pruning amount for " + ", ".join(f"{r} ({share[r]:.0%} of MACs)" for r in top))
    if mixed_precision:
        sens = sensitivity(model, calib, bits=(sensitivity_bits,), progress=False)
        col = f"sqnr_{sensitivity_bits}bit"  # output SQNR (dB) with only that layer at low bits: low = sensitive
        cut = sens[col].median()
        space.bit_layers = {n: ((8,) if sens.loc[n, col] < cut else (4, 6, 8)) for n in sens.index}
        space.quant = ("fp32", "int8", "mixed")
        kept = [n for n, b in space.bit_layers.items() if b == (8,)]
        space.notes.append(f"mixed precision: {len(kept)} sensitive layers keep 8 bits ({', '.join(kept[:4])}"
                           f"{' ...' if len(kept) > 4 else ''})")
    return space


def _group_macs(group: Any, table: Any) -> float:
    """MACs of the layers a channel group touches (its root and every layer slicing its channels)."""
    names = [n for n in dict.fromkeys([group.root, *group.names]) if n in table.index]
    return float(table.loc[names, "macs"].sum())
