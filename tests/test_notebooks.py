"""Every tutorial runs top to bottom in a fresh kernel without error, and is committed without outputs.

While a tutorial runs, a thread samples the kernel's resident memory (its child processes included) every
0.2 s: the peak must stay under 1.5 GiB (mybinder.org gives about 2 GB). Each tutorial's peak and run time are
printed and written to test-artifacts/notebooks/peak_rss.json. The notebooks are executed with
``store_widget_state=True``: the executed notebook's metadata must hold the state of every widget the tutorial
displayed, so a reopened executed notebook shows its panels.

The kernel is this interpreter (the venv's python): a ``python3`` kernelspec pointing at
``sys.executable`` is written to a temp dir that is put first on JUPYTER_PATH, so a fresh ``make test``
needs no ``ipykernel install`` and never picks up another Python.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_profiling", "02_quantization", "03_pruning", "04_deployment", "05_llm", "06_search"]
CELL_TIMEOUT_S = 1800  # a safety net, not a speed check: one cell on 2 loaded cores can take many minutes
PEAK_RSS_LIMIT = 1.5 * 2**30  # bytes; mybinder.org's limit is about 2 GB
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# Tutorials still over the limit: their peak is reported as an expected failure (XFAIL) until they fit. Remove an
# entry once its tutorial fits; a tutorial under the limit passes either way.
# (02_quantization was: 1.89 GiB; 1.45 GiB since the per-layer report frees each fp32 output once compared and
# its EfficientNet cell calibrates in batches of 4.)
KNOWN_OVER: dict[str, str] = {}


@pytest.fixture(scope="session")
def venv_kernel(tmp_path_factory):
    """A ``python3`` kernelspec for this interpreter, first on JUPYTER_PATH for the whole session."""
    data = tmp_path_factory.mktemp("jupyter_data")
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (nbopt venv)", "language": "python",
    }))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(data) + (os.pathsep + old if old else "")
    yield "python3"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


class PeakRSS:
    """Samples a process's resident memory, its children's included, every ``interval`` s in a thread;
    ``peak`` overall and ``by_cell`` (the peak while each cell ran; ``cell`` is set by the caller)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.samples = interval, 0, 0
        self.cell: int | None = None
        self.by_cell: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        import psutil

        proc = psutil.Process(pid)
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak, self.samples = max(self.peak, rss), self.samples + 1
            if self.cell is not None:
                self.by_cell[self.cell] = max(self.by_cell.get(self.cell, 0), rss)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def execute(path: Path, kernel_name: str, rss: PeakRSS | None = None) -> nbformat.NotebookNode:
    """Run ``path`` in a fresh kernel (widget state stored in the metadata); ``rss`` samples the kernel."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name, store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}}, allow_errors=False)
    if rss is not None:
        client.on_notebook_start = lambda notebook: rss.start(client.km.provisioner.pid)
        client.on_cell_start = lambda cell, cell_index: setattr(rss, "cell", cell_index)
    try:
        client.execute()
    finally:
        if rss is not None:
            rss.stop()
    return nb


def record_peak(name: str, rss: PeakRSS, seconds: float) -> Path:
    """Add one tutorial's peak RSS (and its three heaviest cells) to test-artifacts/notebooks/peak_rss.json,
    keeping the other tutorials' entries."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / "peak_rss.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    heaviest = sorted(rss.by_cell.items(), key=lambda kv: -kv[1])[:3]
    data[name] = {"peak_rss_bytes": rss.peak, "peak_rss_gib": round(rss.peak / 2**30, 3), "run_s": round(seconds, 1),
                  "limit_gib": PEAK_RSS_LIMIT / 2**30,
                  "heaviest_cells_gib": {str(i): round(v / 2**30, 3) for i, v in heaviest}}
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out


def displayed_widgets(nb: nbformat.NotebookNode) -> list[str]:
    """Model ids of the widget views the tutorial's outputs display."""
    return [o["data"][WIDGET_VIEW]["model_id"] for c in nb.cells for o in c.get("outputs", [])
            if WIDGET_VIEW in o.get("data", {})]


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_all_tutorials_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    """Committed notebooks carry no outputs, execution counts or widget state (outputs stay out of git)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fresh_kernel(path, venv_kernel):
    rss, started = PeakRSS(), time.monotonic()
    try:
        nb = execute(path, venv_kernel, rss)  # raises CellExecutionError on the first failing cell
    finally:  # the peak so far is recorded even when a cell fails or times out
        seconds = time.monotonic() - started
        artifact = record_peak(path.stem, rss, seconds)
        cells = ", ".join(f"cell {i} {v / 2**30:.2f}" for i, v in sorted(rss.by_cell.items(), key=lambda kv: -kv[1])[:3])
        print(f"{path.stem}: peak kernel RSS {rss.peak / 2**30:.2f} GiB ({rss.samples} samples; heaviest: {cells}), "
              f"{seconds:.0f} s -> {artifact}")
    text = outputs_text(nb)
    assert "Traceback" not in text
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out
    assert rss.samples > 0
    over = (f"{path.name}: the kernel peaked at {rss.peak / 2**30:.2f} GiB, over {PEAK_RSS_LIMIT / 2**30:.1f} GiB "
            "(mybinder.org has about 2 GB)")
    assert rss.peak < PEAK_RSS_LIMIT or path.stem in KNOWN_OVER, over
    # notebooks assert their own key numbers in cells; here: at least one widget view was produced ...
    views = displayed_widgets(nb)
    if path.stem in ("01_profiling", "02_quantization", "03_pruning", "06_search"):
        assert views, f"{path.name} displayed no panel"
    # ... and the executed notebook carries every displayed widget's state (a reopened copy shows the panels)
    if views:
        state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        missing = [v for v in views if v not in state]
        assert not missing, f"{path.name}: no saved state for displayed widgets {missing}"
        for model_id in views:
            assert state[model_id]["model_name"].endswith("Model") and state[model_id]["state"], model_id
        refs = set(re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state)))
        assert refs <= set(state), f"{path.name}: saved widgets refer to unsaved ones {sorted(refs - set(state))}"
    if rss.peak >= PEAK_RSS_LIMIT:  # a tutorial still known to be too heavy: every other check has passed
        pytest.xfail(f"{over}; known: {KNOWN_OVER[path.stem]}")
