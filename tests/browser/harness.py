"""Real-browser harness: Jupyter servers (JupyterLab 4, Notebook 7, Voila) on 127.0.0.1 with a token and
throwaway HOME/JUPYTER dirs, and ``drive.mjs`` (npm playwright-core + Debian chromium) to operate a panel.
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
from typing import Any

from nbopt.panels.common import percent
from nbopt.display.format import readable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = os.environ.get("NBOPT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"


def missing_browser_deps() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} missing: run `make browser-deps` (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node missing: apt-get install -y nodejs npm"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return "playwright-core missing: run `make browser-deps` (npm ci in tests/browser)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(app: str, port: int, token: str) -> bool:
    if app == "voila":  # any GET on Voila's page executes the notebook: only check that the port answers
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_for_server(app: str, port: int, token: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{app} exited with {proc.returncode}")
        if _ready(app, port, token):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{app} did not answer within {timeout:.0f} s")


def _command(app: str, port: int, token: str, work: Path, notebook: str) -> list[str]:
    py = sys.executable
    if app == "voila":
        return [py, "-m", "voila", notebook, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
                f"--token={token}", "--show_tracebacks=True"]
    module, expose = {"lab": ("jupyterlab", "--LabApp.expose_app_in_browser=True"),
                      "notebook": ("notebook", "--JupyterNotebookApp.expose_app_in_browser=True")}[app]
    return [py, "-m", module, "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
            expose, "--allow-root", f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False"]


def _home(home: Path) -> dict[str, str]:
    """A throwaway Jupyter home: news toast off, every cell kept in the page (no windowing, so all outputs can be
    measured), a python3 kernel that is this interpreter."""
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    tracker = home / "lab-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    kernels = home / "jupyter-path" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (nbopt venv)", "language": "python"}))
    return {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_PATH": str(home / "jupyter-path"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "PYTHONPATH": str(ROOT)}


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def start(app: str, notebook: Path, tmp_path: Path) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start lab | notebook | voila serving a copy of ``notebook``; returns the process and how to reach it."""
    home, work = tmp_path / f"{app}-home", tmp_path / f"{app}-work"
    work.mkdir()
    shutil.copy(notebook, work / notebook.name)
    port, token = _free_port(), "nbopt-browser-test-" + os.urandom(8).hex()
    log_path = tmp_path / f"{app}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_command(app, port, token, work, notebook.name), cwd=work, env=_home(home),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = {"app": app, "url": f"http://127.0.0.1:{port}", "token": token, "log": log_path,
              "notebook": notebook.name}
    try:
        _wait_for_server(app, port, token, proc)
    except Exception:
        stop(proc)
        raise
    return proc, server


def drive(server: dict[str, Any], presses: int, key: str = "ArrowRight", timeout: float = 900) -> dict[str, Any]:
    """Run drive.mjs against ``server``; returns its JSON (screenshot in test-artifacts/<app>_panel.png)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / ("pruning_panel.png" if server["app"] == "lab" else f"{server['app']}_panel.png")
    shot.unlink(missing_ok=True)
    env = {**os.environ, "NBOPT_LAB_URL": server["url"], "NBOPT_TOKEN": server["token"],
           "NBOPT_NOTEBOOK": server["notebook"], "NBOPT_SCREENSHOT": str(shot), "NBOPT_PRESSES": str(presses),
           "NBOPT_KEY": key, "NBOPT_FRONTEND": server["app"], "NBOPT_CHROMIUM": CHROMIUM,
           "NBOPT_RUN_TIMEOUT_MS": str(int(1000 * (timeout - 240)))}  # Run All on 2 loaded cores: minutes
    proc = subprocess.run(["node", str(HERE / "drive.mjs")], cwd=HERE, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from drive.mjs (rc {proc.returncode}):\n{proc.stderr[-3000:]}\n" \
                  f"{server['log'].read_text()[-3000:]}"
    out = json.loads(lines[-1])
    assert proc.returncode == 0 and "failure" not in out, (out.get("failure"), proc.stderr[-3000:],
                                                            server["log"].read_text()[-2000:])
    assert out["errors"] == [], out["errors"]
    assert Path(out["screenshot"]).exists() and Path(out["screenshot"]).stat().st_size > 10_000
    return out


def look(server: dict[str, Any], name: str, timeout: float = 900) -> dict[str, Any]:
    """Run tutorial.mjs against ``server``: Run All, measure, screenshot, drive the panels. Returns its JSON;
    screenshots land in test-artifacts/browser/<name>/ (emptied first)."""
    folder = ARTIFACTS / "browser" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, "NBOPT_LAB_URL": server["url"], "NBOPT_TOKEN": server["token"],
           "NBOPT_NOTEBOOK": server["notebook"], "NBOPT_ARTIFACTS": str(folder), "NBOPT_CHROMIUM": CHROMIUM,
           "NBOPT_RUN_TIMEOUT_MS": str(int(1000 * (timeout - 120)))}
    proc = subprocess.run(["node", str(HERE / "tutorial.mjs")], cwd=HERE, env=env, capture_output=True, text=True,
                          timeout=timeout)
    (folder / "drive.log").write_text(proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from tutorial.mjs (rc {proc.returncode}):\n{proc.stderr[-3000:]}\n" \
                  f"{server['log'].read_text()[-3000:]}"
    out = json.loads(lines[-1])
    (folder / "result.json").write_text(json.dumps(out, indent=1))
    out["folder"] = folder
    assert proc.returncode == 0 and "failure" not in out, (out.get("failure"), proc.stderr[-3000:],
                                                            server["log"].read_text()[-2000:])
    return out


def check_page(out: dict[str, Any], expected: dict[str, Any]) -> None:
    """The page's PruningPanel (after the key presses) shows ``expected``: per-layer sparsity, params and
    MACs as computed by a fresh Pruner for the slider's value, total sparsity, and held-out accuracy."""
    after = out["after"]
    headers = out["headers"]
    col = {name: headers.index(name) for name in ("sparsity", "params_after", "effective_macs")}
    rows = {r[0]: r for r in after["rows"]}
    assert list(rows) == expected["layers"]
    for i, layer in enumerate(expected["layers"]):
        assert rows[layer][col["sparsity"]] == percent(expected["sparsity"][i]), layer
        assert rows[layer][col["params_after"]] == readable(expected["params_after"][i]), layer
        assert rows[layer][col["effective_macs"]] == readable(expected["effective_macs"][i]), layer
    assert f"accuracy {100 * expected['accuracy']:.2f}%" in after["accuracy"], (after["accuracy"], expected)
    assert f"{100 * expected['total_sparsity']:.1f}%" in after["totals"]
