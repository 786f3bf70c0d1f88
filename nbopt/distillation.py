"""``distill``: train a copy of a (pruned, smaller) student to match a teacher (Hinton et al.'s logit distillation,
optionally intermediate features), with per-epoch curves; the stop button keeps the epochs done.

Same conventions as :func:`nbopt.finetune`: a copy is trained (neither model is modified), Adam with ``lr`` by
default, exact zeros kept at zero, seeded, ``tqdm.auto`` progress, ``PartialResultWarning`` on interrupt.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, NboptError, PartialResultWarning, check_on_interrupt
from .inputs import batches, call, check_module
from .model_state import preserved, working_copy

LOSSES = ("kl", "mse")
RECOVERY_METHODS = ("finetune", "distill")  # the recovery steps optimize, %prune and the PruningPanel offer


def recover(pruned: nn.Module, original: nn.Module, method: str, data: Any, *, epochs: int = 2,
            progress: bool = True, **kwargs: Any) -> nn.Module:
    """Recover a pruned copy's accuracy: ``finetune`` (cross-entropy) or ``distill`` from ``original``."""
    if method not in RECOVERY_METHODS:
        raise InputError(f"recovery must be one of {RECOVERY_METHODS}, got {method!r}")
    if data is None:
        raise InputError(f"recovery by {method} needs labelled training batches (x, y), e.g. demo.train_loader()")
    if method == "distill":
        return distill(pruned, original, data, epochs=epochs, progress=progress, **kwargs).model
    from .pruning.finetune import finetune

    return finetune(pruned, data, F.cross_entropy, epochs=epochs, progress=progress, **kwargs)


@dataclass
class DistillResult:
    """The trained student copy, one row per epoch (``history``: loss parts, accuracy) and notes.

    Row 0 is the student before training (no loss). ``partial`` is True when the run was interrupted; the
    model then holds the last finished optimizer step.
    """

    model: nn.Module
    history: pd.DataFrame
    setting: dict[str, Any]
    teacher_accuracy: float = math.nan
    partial: bool = False
    epochs_completed: int = 0
    steps_completed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """The student's accuracy after the last finished epoch (NaN without ``evaluate``)."""
        return float(self.history["accuracy"].iloc[-1]) if len(self.history) else math.nan

    def plot(self, ax: Any = None) -> Any:
        """Loss and accuracy per epoch (matplotlib figure)."""
        from .display.search_figures import plot_curves

        return plot_curves({"distill": self.history}, teacher_accuracy=self.teacher_accuracy, ax=ax)

    def __repr__(self) -> str:
        acc = "" if math.isnan(self.accuracy) else f", accuracy {self.accuracy:.4f}"
        partial = ", PARTIAL" if self.partial else ""
        return f"DistillResult({self.epochs_completed} epochs{acc}{partial})" + "".join(f"\n{n}" for n in self.notes)

    def _repr_html_(self) -> str:
        from .display.frames import html_table  # front-end imported on demand
        from .display.results import notes_html

        return html_table(self.history, where="`.history`") + notes_html(self.notes)


def distill(student: nn.Module, teacher: nn.Module, data: Any, *, epochs: int = 3, temperature: float = 4.0,
            alpha: float = 0.9, loss: str = "kl", features: Sequence[tuple[str, str]] | None = None,
            feature_weight: float = 1.0, optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
            lr: float = 1e-3, weight_decay: float = 0.0, evaluate: Callable[[nn.Module], float] | None = None,
            keep_sparsity: bool = True, seed: int | None = 0, progress: bool = True,
            on_interrupt: str = "return") -> DistillResult:
    """Train a copy of ``student`` on ``(inputs, labels)`` batches to match ``teacher``; return a DistillResult.

    Loss per batch: ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))`` (``loss="kl"``; ``"mse"``:
    ``alpha * MSE(student logits, teacher logits)``) ``+ (1 - alpha) * cross_entropy(student, labels)``, plus
    ``feature_weight * MSE(proj(student[a]), teacher[b])`` for each ``(a, b)`` in ``features`` (layer names of
    the student and teacher; ``proj`` is a learned 1x1 convolution / linear map where the widths differ, trained
    with the student and then dropped). ``alpha=0`` is plain fine-tuning (the same loop as :func:`finetune`).

    ``optimizer(params) -> torch.optim.Optimizer`` replaces the default ``Adam(lr, weight_decay)``.
    ``evaluate(model) -> accuracy`` fills the ``accuracy`` column after each epoch. The stop button (Ctrl-C)
    with ``on_interrupt="return"`` returns the copy as of the last finished step with a PartialResultWarning.

    When it beats fine-tuning (benchmarks/distill.py, the demo CNN after 70% structured pruning): with few
    labelled images and a long schedule on augmented views that the teacher labels as the student sees them
    (yield already-augmented batches; both methods then train on the same views), e.g. 256 digits shifted by up
    to a pixel, 30 epochs, these defaults (T=4, alpha=0.9). With all the data (1,437 digits, 3 epochs) fine-tuning
    is as accurate or more (distillation still has the lower held-out NLL).
    """
    check_module(student, "student")
    check_module(teacher, "teacher")
    _check_args(epochs, temperature, alpha, loss, lr, on_interrupt, evaluate)
    data = batches(data)
    tuned = working_copy(student)
    teacher_copy = working_copy(teacher).eval()
    for p in teacher_copy.parameters():
        p.requires_grad_(False)
    setting = dict(epochs=epochs, temperature=temperature, alpha=alpha, loss=loss, features=list(features or []),
                   lr=lr, seed=seed)
    result = DistillResult(tuned, pd.DataFrame(), setting)
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        hooks = _FeatureHooks(tuned, teacher_copy, features or [], data) if features else None
        params = [p for p in tuned.parameters() if p.requires_grad]
        if not params:
            raise NboptError("the student has no trainable parameters (requires_grad=False everywhere); "
                             "unfreeze some first")
        extra = [p for proj in (hooks.projections if hooks else []) for p in proj.parameters()]
        masks = {p: p.detach() != 0 for p in params if p.dim() > 1} if keep_sparsity else {}
        opt = (optimizer(params + extra) if optimizer is not None
               else torch.optim.Adam(params + extra, lr=lr, weight_decay=weight_decay))
        rows = [_row(0, None, evaluate, tuned)]
        if evaluate is not None:
            with torch.random.fork_rng():
                result.teacher_accuracy = float(evaluate(teacher))
        loop = _Loop(tuned, teacher_copy, hooks, opt, masks, setting, feature_weight, result)
        try:
            with torch.enable_grad():
                loop.run(data, epochs, progress, rows, evaluate)
        except KeyboardInterrupt:
            if on_interrupt == "raise" or result.steps_completed == 0:
                raise
            loop.rollback()
            result.partial = True
            warnings.warn(f"distillation was interrupted after {result.epochs_completed} of {epochs} epochs "
                          f"({result.steps_completed} steps); returning the partly trained copy "
                          "(result.partial is True).", PartialResultWarning, stacklevel=2)
        finally:
            if hooks:
                hooks.remove()
    result.history = pd.DataFrame(rows).set_index("epoch")
    result.model = tuned.eval()
    if not math.isnan(result.teacher_accuracy):
        result.notes.append(f"teacher accuracy {result.teacher_accuracy:.4f}; student {rows[0]['accuracy']:.4f} "
                            f"before, {rows[-1]['accuracy']:.4f} after {result.epochs_completed} epochs")
    return result


def _check_args(epochs: Any, temperature: Any, alpha: Any, loss: Any, lr: Any, on_interrupt: Any,
                evaluate: Any) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise InputError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise InputError(f"temperature must be > 0 (typical: 2-8), got {temperature!r}")
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(f"alpha (the weight of the teacher's loss) must be in [0, 1], got {alpha!r}")
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {LOSSES} (logits: KL at temperature T, or MSE), got {loss!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise InputError(f"lr must be a positive learning rate such as 1e-3, got {lr!r}")
    if evaluate is not None and not callable(evaluate):
        raise InputError(f"evaluate must be a function model -> accuracy, got {type(evaluate).__name__}")
    check_on_interrupt(on_interrupt)


def _row(epoch: int, losses: dict[str, float] | None, evaluate: Callable | None, model: nn.Module) -> dict:
    row = {"epoch": epoch, "loss": math.nan, "soft_loss": math.nan, "hard_loss": math.nan, "feature_loss": math.nan}
    row.update(losses or {})
    with preserved(model), torch.random.fork_rng():  # evaluating (a DataLoader draws a seed) leaves training's RNG
        row["accuracy"] = float(evaluate(model)) if evaluate is not None else math.nan
    return row


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise InputError("data must yield (inputs, labels) pairs, e.g. a DataLoader over a TensorDataset(x, y) "
                     "(nbopt.demo.train_loader())")


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, C) logits, or per position of (N, T, V) sequence logits with (N, T) labels."""
    if logits.dim() > 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return F.cross_entropy(logits, labels)


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, an output with ``.logits`` (transformers), a dict with
    ``"logits"``, or a tuple / list starting with a tensor; else an NboptError saying what to return."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise NboptError(f"expected the model's logits; it returned {type(out).__name__} (return a tensor, "
                     "a tuple starting with one, or an output with .logits)")


class _FeatureHooks:
    """Forward hooks capturing the named student/teacher layers' outputs, and the learned projections."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: Sequence[tuple[str, str]], data: Any):
        self.pairs = [tuple(p) for p in pairs]
        self.out: dict[tuple[str, int], torch.Tensor] = {}
        self.handles = []
        for side, model in (("s", student), ("t", teacher)):
            for i, pair in enumerate(self.pairs):
                name = pair[0 if side == "s" else 1]
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    names = [n for n, _ in model.named_modules() if n][:12]
                    raise InputError(f"features: {'student' if side == 's' else 'teacher'} has no layer {name!r}; "
                                     f"layer names look like {names}") from None
                self.handles.append(module.register_forward_hook(self._keep(side, i)))
        try:
            x, _ = _split(next(iter(data)))
            with torch.no_grad(), preserved(student, eval_mode=True):
                call(student, x)
                call(teacher, x)
            self.projections = [self._projection(i) for i in range(len(self.pairs))]
        except BaseException:
            self.remove()
            raise

    def _keep(self, side: str, i: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.out[(side, i)] = logits_of(output)
        return hook

    def _projection(self, i: int) -> nn.Module:
        s, t = self.out[("s", i)], self.out[("t", i)]
        width = 1 if s.dim() in (2, 4) else -1  # (N, C, H, W) and (N, D): dim 1; (N, T, D): the last dim
        same = [d for d in range(s.dim()) if d != width % s.dim()]
        if s.dim() != t.dim() or [s.shape[d] for d in same] != [t.shape[d] for d in same]:
            raise InputError(f"features {self.pairs[i]}: shapes {tuple(s.shape)} and {tuple(t.shape)} differ beyond "
                             "the channel dimension; pick layers whose outputs have the same spatial size")
        if s.shape[width] == t.shape[width]:
            return nn.Identity()
        if s.dim() == 4:
            return nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
        return nn.Linear(s.shape[width], t.shape[width], bias=False)

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for i, proj in enumerate(self.projections):
            total = total + F.mse_loss(proj(self.out[("s", i)]), self.out[("t", i)].detach())
        return total / max(len(self.projections), 1)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class _Loop:
    """The training loop, counting finished steps; keeps the buffers of the last finished step."""

    def __init__(self, student, teacher, hooks, opt, masks, setting, feature_weight, result):
        self.student, self.teacher, self.hooks, self.opt, self.masks = student, teacher, hooks, opt, masks
        self.T, self.alpha, self.kind = float(setting["temperature"]), float(setting["alpha"]), setting["loss"]
        self.feature_weight, self.result = feature_weight, result
        self.buffers = list(student.buffers())
        self.done = [b.detach().clone() for b in self.buffers]

    def run(self, data: Any, epochs: int, progress: bool, rows: list[dict], evaluate: Callable | None) -> None:
        from tqdm.auto import tqdm

        self.student.train()
        with tqdm(total=epochs, desc="distill", disable=not progress, leave=False) as outer:
            for epoch in range(epochs):
                sums = {"loss": 0.0, "soft_loss": 0.0, "hard_loss": 0.0, "feature_loss": 0.0}
                n = 0
                for batch in tqdm(data, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
                    parts = self.step(*_split(batch))
                    for k, v in parts.items():
                        sums[k] += v
                    n += 1
                self.result.epochs_completed += 1
                rows.append(_row(epoch + 1, {k: v / max(n, 1) for k, v in sums.items()}, evaluate, self.student))
                self.student.train()
                outer.update(1)

    def step(self, x: Any, y: torch.Tensor) -> dict[str, float]:
        self.opt.zero_grad()
        s = logits_of(call(self.student, x))
        hard = _cross_entropy(s, y) if self.alpha < 1 else torch.zeros(())
        soft = feat = torch.zeros(())
        if self.alpha > 0 or self.hooks:
            with torch.no_grad():
                t = logits_of(call(self.teacher, x))
            if self.alpha > 0:
                soft = self._soft(s, t)
            if self.hooks:
                feat = self.hooks.loss()
        loss = self.alpha * soft + (1 - self.alpha) * hard + self.feature_weight * feat
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for p, keep in self.masks.items():
                p.mul_(keep)
            for d, b in zip(self.done, self.buffers):
                d.copy_(b)
        self.result.steps_completed += 1
        return {"loss": float(loss.detach()), "soft_loss": float(soft.detach()), "hard_loss": float(hard.detach()),
                "feature_loss": float(feat.detach())}

    def _soft(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return F.mse_loss(s, t)
        s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        return F.kl_div(F.log_softmax(s / self.T, -1), F.log_softmax(t / self.T, -1), reduction="batchmean",
                        log_target=True) * self.T ** 2

    def rollback(self) -> None:
        """After an interrupt: zeros back to zero, buffers as of the last finished step."""
        with torch.no_grad():
            for p, keep in self.masks.items():
                p.mul_(keep)
            for b, d in zip(self.buffers, self.done):
                b.copy_(d)
