"""End to end in a real browser: JupyterLab + Debian chromium + npm playwright-core.

Starts JupyterLab on 127.0.0.1 with a token and a throwaway HOME/JUPYTER dirs, opens a copy of
notebooks/03_pruning.ipynb, runs it, moves the PruningPanel's sparsity slider with ArrowRight, and checks
that the page's per-layer table and accuracy readout equal what the kernel computes for that setting
with a fresh ``nbopt.Pruner`` and ``nbopt.demo.evaluate``. Screenshot: test-artifacts/pruning_panel.png.
``make test`` installs what it needs (``make browser-deps``: apt chromium, npm playwright-core).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nbopt.panels.common import percent
from nbopt.render import readable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = os.environ.get("NBOPT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
PRESSES = 10  # 10 x ArrowRight on a 0.05-step slider: 0.00 -> 0.50

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} missing: run `make browser-deps` (apt-get install -y chromium)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="node missing: apt-get install -y nodejs npm"),
    pytest.mark.skipif(not (HERE / "node_modules" / "playwright-core").is_dir(),
                       reason="playwright-core missing: run `make browser-deps` (npm ci in tests/browser)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("jupyter lab did not answer within the timeout")


@pytest.fixture()
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the pruning notebook; always killed."""
    home, work = tmp_path / "home", tmp_path / "work"
    for d in (home, work):
        d.mkdir()
    shutil.copy(ROOT / "notebooks" / "03_pruning.ipynb", work / "03_pruning.ipynb")
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    kernels = home / "jupyter-path" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (nbopt venv)", "language": "python"}))
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_PATH": str(home / "jupyter-path"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "PYTHONPATH": str(ROOT)}
    port, token = _free_port(), "nbopt-browser-test-" + os.urandom(8).hex()
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True", "--allow-root",
         f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "log": tmp_path / "lab.log"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


def test_slider_moved_with_keyboard_updates_table_and_accuracy(lab):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "pruning_panel.png"
    shot.unlink(missing_ok=True)
    env = {**os.environ, "NBOPT_LAB_URL": lab["url"], "NBOPT_TOKEN": lab["token"],
           "NBOPT_NOTEBOOK": "03_pruning.ipynb", "NBOPT_SCREENSHOT": str(shot), "NBOPT_PRESSES": str(PRESSES),
           "NBOPT_CHROMIUM": CHROMIUM}
    proc = subprocess.run(["node", str(HERE / "drive.mjs")], cwd=HERE, env=env, capture_output=True, text=True,
                          timeout=420)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from drive.mjs (rc {proc.returncode}):\n{proc.stderr[-3000:]}\n" \
                  f"{lab['log'].read_text()[-3000:]}"
    out = json.loads(lines[-1])
    assert proc.returncode == 0 and "failure" not in out, (out.get("failure"), proc.stderr[-3000:])
    assert out["errors"] == [], out["errors"]

    before, after = out["before"], out["after"]
    assert float(before["valuenow"]) == 0.0 and before["readout"] == "0.00"
    assert float(after["valuenow"]) == pytest.approx(0.05 * PRESSES, abs=0.051)  # aria value has 1 decimal
    assert after["readout"] == f"{0.05 * PRESSES:.2f}"
    assert after["rows"] != before["rows"] and after["accuracy"] != before["accuracy"]
    assert before["plot"] and after["plot"] and after["plot"] != before["plot"], "the plot did not update in place"

    marker = [ln for ln in out["kernel"].splitlines() if ln.startswith("NBOPT_JSON")]
    assert marker, out["kernel"]
    kernel = json.loads(marker[0][len("NBOPT_JSON"):])
    assert kernel["slider"] == pytest.approx(0.05 * PRESSES)

    # the page's table: one row per prunable layer, showing the kernel's own numbers for this setting
    headers = out["headers"]
    col = {name: headers.index(name) for name in ("sparsity", "params_after", "effective_macs")}
    rows = {r[0]: r for r in after["rows"]}
    assert list(rows) == kernel["layers"]
    for i, layer in enumerate(kernel["layers"]):
        assert rows[layer][col["sparsity"]] == percent(kernel["sparsity"][i]), layer
        assert rows[layer][col["params_after"]] == readable(kernel["params_after"][i]), layer
        assert rows[layer][col["effective_macs"]] == readable(kernel["effective_macs"][i]), layer
    # the accuracy readout: held-out accuracy of the pruned model, measured in the kernel
    assert f"accuracy {100 * kernel['accuracy']:.2f}%" in after["accuracy"]
    assert kernel["panel_accuracy"] == kernel["accuracy"]
    assert f"{100 * kernel['total_sparsity']:.1f}%" in after["totals"]
    # the screenshot is the test artifact
    assert shot.exists() and shot.stat().st_size > 10_000
