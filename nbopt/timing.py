"""One way to time things: warmup, repeats, median and spread, interleaved comparisons and their ratios, the
machine's load, CUDA sync."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch


NOISY_SPREAD = 0.25  # a timing whose interquartile range exceeds a quarter of its median is called noisy


def _quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        value = samples[0] if samples else float("nan")
        return value, value
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q3


@dataclass
class Timing:
    """Repeated wall-clock samples of one callable, in milliseconds, with their spread.

    ``spread`` is the interquartile range relative to the median; above :data:`NOISY_SPREAD` the timing is
    ``noisy`` and a ranking or ratio read from it should say so.
    """

    samples_ms: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def q1_ms(self) -> float:
        return _quartiles(self.samples_ms)[0]

    @property
    def q3_ms(self) -> float:
        return _quartiles(self.samples_ms)[1]

    @property
    def iqr_ms(self) -> float:
        q1, q3 = _quartiles(self.samples_ms)
        return q3 - q1

    @property
    def spread(self) -> float:
        """Interquartile range / median (0 for one sample, NaN for none)."""
        median = self.median_ms
        return self.iqr_ms / median if median and median == median else float("nan")

    @property
    def noisy(self) -> bool:
        return bool(self.spread > NOISY_SPREAD)

    def summary(self) -> dict[str, float]:
        """Median, quartiles, extremes and call count, as plain numbers."""
        q1, q3 = _quartiles(self.samples_ms)
        return {"median_ms": self.median_ms, "q1_ms": q1, "q3_ms": q3, "min_ms": self.min_ms,
                "max_ms": self.max_ms, "n": self.n}

    def describe(self) -> str:
        """``12.34 ms (IQR 12.10-12.90, n=20)``."""
        q1, q3 = _quartiles(self.samples_ms)
        return f"{self.median_ms:.3g} ms (IQR {q1:.3g}-{q3:.3g}, n={self.n})"

    def __repr__(self) -> str:
        return f"Timing(median={self.median_ms:.3f} ms, IQR {self.q1_ms:.3f}-{self.q3_ms:.3f}, n={self.n})"


@dataclass(frozen=True)
class Ratio:
    """How many times faster ``other`` ran than ``baseline`` in one interleaved measurement.

    ``value`` is baseline median / other median; ``q1``/``q3`` are the quartiles of the per-round ratios
    (sample i of both sides comes from the same round of :func:`compare`), ``n`` the number of rounds.
    """

    value: float
    q1: float
    q3: float
    n: int

    @property
    def noisy(self) -> bool:
        return bool((self.q3 - self.q1) > NOISY_SPREAD * self.value)

    def describe(self) -> str:
        """``4.41x (IQR 4.20-4.60x, n=20)``."""
        return f"{self.value:.3g}x (IQR {self.q1:.3g}-{self.q3:.3g}x, n={self.n})"


def ratio(baseline: Timing, other: Timing) -> Ratio:
    """Speed-up of ``other`` over ``baseline``, both timed by the same :func:`compare` call."""
    pairs = [b / o for b, o in zip(baseline.samples_ms, other.samples_ms) if o > 0]
    q1, q3 = _quartiles(sorted(pairs))
    value = baseline.median_ms / other.median_ms if other.median_ms else float("nan")
    return Ratio(value, q1, q3, len(pairs))


@dataclass(frozen=True)
class MachineLoad:
    """The 1-minute load average beside the cores this process may use; ``busy`` when it exceeds them."""

    load_1min: float
    cores: int

    @property
    def busy(self) -> bool:
        return self.load_1min > self.cores


def machine_load() -> MachineLoad:
    """The machine's load now (NaN where the OS has no load average)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = float("nan")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return MachineLoad(load, cores)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so a timer measures the kernels and not their launch."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 10,
            device: torch.device | str | None = None) -> Timing:
    """Median-able timings of ``fn()`` after ``warmup`` untimed calls."""
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            fn()
        synchronize(device)
        timing = Timing()
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            timing.samples_ms.append((time.perf_counter() - t0) * 1e3)
    return timing


def compare(fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeat: int = 10, block: int = 1,
            settle_ms: float = 0.0, device: torch.device | str | None = None) -> dict[str, Timing]:
    """Time several callables interleaved (A, B, A, B, ...) so drifting machine load hits all alike.

    ``block > 1`` interleaves blocks instead of single calls: each block starts with untimed calls (one, or
    as many as fill ``settle_ms``), then times ``block`` calls in a row (``repeat`` blocks per callable).
    That measures each program in steady state, as a user's loop runs it: runtimes whose idle threads keep
    spinning after a call (torch's OpenMP pool for up to ~200 ms, onnxruntime) otherwise slow whichever
    program runs right after them.
    """
    timings = {name: Timing() for name in fns}
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            for fn in fns.values():
                fn()
        synchronize(device)
        for _ in range(max(1, repeat)):
            for name, fn in fns.items():
                if block > 1:
                    _settle(fn, settle_ms, device)
                for _ in range(max(1, block)):
                    t0 = time.perf_counter()
                    fn()
                    synchronize(device)
                    timings[name].samples_ms.append((time.perf_counter() - t0) * 1e3)
    return timings


def _settle(fn: Callable[[], object], settle_ms: float, device: torch.device | str | None) -> None:
    """Call ``fn`` untimed at least once and until ``settle_ms`` have passed."""
    t0 = time.perf_counter()
    while True:
        fn()
        synchronize(device)
        if (time.perf_counter() - t0) * 1e3 >= settle_ms:
            return


def auto_repeat(fn: Callable[[], object], *, budget_s: float = 1.0, lo: int = 3, hi: int = 20,
                device: torch.device | str | None = None) -> int:
    """How many repeats of ``fn`` fit in about ``budget_s`` seconds (one call is timed to find out)."""
    with torch.no_grad():
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        once = time.perf_counter() - t0
    return int(min(hi, max(lo, budget_s / max(once, 1e-6))))


MIN_CALLS = 5  # fewer timed calls than this give quartiles too coarse to judge a spread by


def is_noisy(timings: Timing | Mapping[str, Timing] | Iterable[Timing], load: MachineLoad | None = None) -> bool:
    """Whether any of ``timings`` is :attr:`Timing.noisy` or the machine was ``busy`` while they ran."""
    return bool(_noisy_items(timings) or (load is not None and load.busy))


def _timing_items(timings: Timing | Mapping[str, Timing] | Iterable[Timing]) -> list[tuple[str, Timing]]:
    if isinstance(timings, Timing):
        return [("", timings)]
    if isinstance(timings, Mapping):
        return [(str(k), t) for k, t in timings.items()]
    return [("", t) for t in timings]


def _noisy_items(timings: Timing | Mapping[str, Timing] | Iterable[Timing]) -> list[tuple[str, Timing]]:
    return [(k, t) for k, t in _timing_items(timings) if t.noisy]


def noise_note(timings: Timing | Mapping[str, Timing] | Iterable[Timing], load: MachineLoad | None = None,
               *, what: str = "latency") -> str:
    """A sentence saying why ``timings`` should not be trusted, or ``""`` when they look quiet.

    Names the timings whose spread (IQR / median) exceeds :data:`NOISY_SPREAD`, a busy machine (1-minute load
    average above its cores) and timings of fewer than :data:`MIN_CALLS` calls, e.g. ``"noisy latency: spread
    38% for fp32 (IQR/median; above 25%); machine busy (load 5.2 on 2 cores). Differences smaller than the
    spread are not findings; re-run on a quiet machine or with more repeats."``
    """
    reasons = []
    noisy = _noisy_items(timings)
    if noisy:
        parts = ", ".join(f"{100 * t.spread:.0f}%" + (f" for {k}" if k else "") for k, t in noisy)
        reasons.append(f"spread {parts} (IQR/median; above {100 * NOISY_SPREAD:.0f}%)")
    if load is not None and load.busy:
        reasons.append(f"machine busy (load {load.load_1min:.1f} on {load.cores} cores)")
    if not reasons:
        return ""
    few = [t.n for _, t in _timing_items(timings) if 0 < t.n < MIN_CALLS]
    if few:
        reasons.append(f"only {min(few)} timed calls")
    return (f"noisy {what}: " + "; ".join(reasons) + ". Differences smaller than the spread are not findings; "
            "re-run on a quiet machine or with more repeats.")


@dataclass
class ModuleTimings:
    """Per-module wall time over repeated calls of one function, from :func:`module_timings`.

    ``inclusive[name]`` holds, per call of the function, the time spent inside the module (all its
    invocations in that call, children included); ``own[name]`` the same minus the time of the named modules
    it called, measured within each invocation, so it is never negative and, in every call, the ``own`` times
    of all modules add up to the inclusive times of the outermost ones.
    """

    inclusive: dict[str, Timing] = field(default_factory=dict)
    own: dict[str, Timing] = field(default_factory=dict)
    calls: int = 0

    def medians(self) -> dict[str, float]:
        return {k: t.median_ms for k, t in self.inclusive.items()}


def module_timings(fn: Callable[[], object], names: Mapping[int, str], *, repeat: int = 10,
                   device: torch.device | str | None = None) -> ModuleTimings:
    """Inclusive and own (self) wall time of each named module in each of ``repeat`` calls of ``fn``.

    Modules whose id is not in ``names`` are transparent: their time counts towards the nearest named module
    around them. Uses PyTorch's global module hooks for the duration of the calls only; they are always removed.
    """
    from torch.nn.modules import module as _module

    runs: list[tuple[dict[str, float], dict[str, float]]] = []
    stack: list[list] = []  # [id, name, start, time of named children]
    needs_sync = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    sync = torch.cuda.synchronize if needs_sync else (lambda: None)  # decided once: hooks run per module

    def pre(module: torch.nn.Module, args: tuple) -> None:
        name = names.get(id(module))
        if name is None:
            return
        sync()
        stack.append([id(module), name, time.perf_counter(), 0.0])

    def post(module: torch.nn.Module, args: tuple, output: object) -> None:
        if not stack or stack[-1][0] != id(module):
            return
        sync()
        elapsed = (time.perf_counter() - stack[-1][2]) * 1e3
        _, name, _, children = stack.pop()
        inclusive, own = runs[-1]
        inclusive[name] = inclusive.get(name, 0.0) + elapsed
        own[name] = own.get(name, 0.0) + max(0.0, elapsed - children)
        if stack:
            stack[-1][3] += elapsed

    handles = [_module.register_module_forward_pre_hook(pre),
               _module.register_module_forward_hook(post, always_call=True)]
    try:
        with torch.no_grad():
            for _ in range(max(1, repeat)):
                runs.append(({}, {}))
                stack.clear()
                fn()
    finally:
        for h in handles:
            h.remove()
    keys = set().union(*(inc for inc, _ in runs)) if runs else set()
    return ModuleTimings(inclusive={k: Timing([inc.get(k, 0.0) for inc, _ in runs]) for k in keys},
                         own={k: Timing([own.get(k, 0.0) for _, own in runs]) for k in keys}, calls=len(runs))


STEADY_BLOCK, STEADY_SETTLE_MS = 3, 100.0  # compare_pair's blocks: 3 timed calls after >= 100 ms of untimed ones
CONTENDED_WAIT = 0.1  # this process's threads waited for a CPU more than 10% of the timing's wall time


def cpu_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed over its threads
    (Linux ``/proc/self/task/*/schedstat``; None elsewhere). Its growth during a timing is CPU contention:
    other processes held the cores the timed code's threads needed."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    total, found = 0, False
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
            found = True
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9 if found else None


@dataclass(frozen=True)
class Pair:
    """Two callables timed by ONE interleaved :func:`compare` call, from :func:`compare_pair`.

    ``baseline`` and ``other`` are both sides' samples, ``speedup`` the :class:`Ratio` of baseline over other
    (its ``value`` is exactly ``baseline.median_ms / other.median_ms``), ``load`` the machine's load (the
    higher of before and after), ``cpu_wait`` the seconds this process's threads waited for a CPU per second
    of the timing (None where the OS does not say). A latency and a speed-up read from one ``Pair`` agree.
    """

    names: tuple[str, str]
    baseline: Timing
    other: Timing
    load: MachineLoad
    cpu_wait: float | None = None

    @property
    def timings(self) -> dict[str, Timing]:
        return {self.names[0]: self.baseline, self.names[1]: self.other}

    @property
    def speedup(self) -> Ratio:
        return ratio(self.baseline, self.other)

    @property
    def contended(self) -> bool:
        """The timed threads waited for a CPU more than :data:`CONTENDED_WAIT` of the time (other processes)."""
        return bool(self.cpu_wait is not None and self.cpu_wait > CONTENDED_WAIT)

    @property
    def noisy(self) -> bool:
        """Either side's spread above :data:`NOISY_SPREAD`, per-round ratios that spread as much, a busy
        machine, or contended CPUs."""
        return bool(is_noisy(self.timings, self.load) or self.speedup.noisy or self.contended)

    def note(self, what: str = "speedup") -> str:
        """Why the speed-up is not a finding (``""`` when the pair looks quiet), naming the ratio and its IQR."""
        r = self.speedup
        label = f"{what} {r.describe()}"
        text = noise_note(self.timings, self.load, what=label)
        tail = ("Differences smaller than the spread are not findings; re-run on a quiet machine or with more "
                "repeats.")
        extra = []
        if r.noisy and not text:
            extra.append(f"the per-round ratios spread more than {100 * NOISY_SPREAD:.0f}% of it")
        if self.contended:
            extra.append(f"CPU contention (the timed threads waited for a CPU {100 * self.cpu_wait:.0f}% of the "
                         "time: other processes were running)")
        if not extra:
            return text
        if text:
            return text.replace(f". {tail}", "; " + "; ".join(extra) + f". {tail}")
        return f"noisy {label}: " + "; ".join(extra) + f". {tail}"

    def summaries(self) -> dict[str, dict[str, float]]:
        """Each side's :meth:`Timing.summary` (median, quartiles, min/max, calls), by name."""
        return {k: t.summary() for k, t in self.timings.items()}


def compare_pair(baseline: Callable[[], object], other: Callable[[], object], *,
                 names: tuple[str, str] = ("baseline", "other"), warmup: int = 3, repeat: int = 20,
                 steady: bool = True, device: torch.device | str | None = None) -> Pair:
    """Time ``baseline`` and ``other`` interleaved in one :func:`compare` call: about ``repeat`` timed calls each.

    See :func:`compare_steady` for ``steady``; the machine's load and this process's CPU wait are recorded
    for the noise check.
    """
    t, load, wait = compare_steady({names[0]: baseline, names[1]: other}, warmup=warmup, repeat=repeat,
                                   steady=steady, device=device)
    return Pair(names, t[names[0]], t[names[1]], load, wait)


def compare_steady(fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeat: int = 20,
                   steady: bool = True, device: torch.device | str | None = None
                   ) -> tuple[dict[str, Timing], MachineLoad, float | None]:
    """:func:`compare` with about ``repeat`` timed calls each, plus the machine's load (the higher of before and
    after) and the seconds this process's threads waited for a CPU per second of timing (None if unknown).

    ``steady=True`` (with ``repeat >= STEADY_BLOCK``) times blocks of :data:`STEADY_BLOCK` calls, each after at
    least :data:`STEADY_SETTLE_MS` of untimed calls of the same program, so a runtime whose threads spin after
    a call (torch's OpenMP pool, onnxruntime) does not slow the next program; ``steady=False`` alternates
    single calls.
    """
    before, wait0, t0 = machine_load(), cpu_wait_s(), time.perf_counter()
    if steady and repeat >= STEADY_BLOCK:
        t = compare(fns, warmup=warmup, repeat=max(1, round(repeat / STEADY_BLOCK)), block=STEADY_BLOCK,
                    settle_ms=STEADY_SETTLE_MS, device=device)
    else:
        t = compare(fns, warmup=warmup, repeat=repeat, device=device)
    wall, wait1, after = time.perf_counter() - t0, cpu_wait_s(), machine_load()
    wait = max(0.0, wait1 - wait0) / wall if wait0 is not None and wait1 is not None and wall > 0 else None
    return t, (after if after.load_1min > before.load_1min else before), wait
