"""``%load_ext`` / ``%reload_ext`` / ``%unload_ext nbopt`` leave the shell clean, and a real kernel session
(nbclient + ipykernel) ends with no hook, patch or dispatch mode left behind."""
from __future__ import annotations

import json

import nbformat
import pytest

from nbopt.magics import MAGICS, _classes
from kernel_state import ipython_shell

OURS = {"profile_flops", "prune", "quantize", "export"}


def nbopt_magics(ip) -> dict[str, list[str]]:
    """Magics registered by nbopt classes, per kind, with duplicates kept (by owner class)."""
    names = {cls.__name__ for cls in _classes()}
    out = {}
    for kind in ("line", "cell"):
        out[kind] = sorted(n for n, fn in ip.magics_manager.magics[kind].items()
                           if type(getattr(fn, "__self__", None)).__name__ in names)
    return out


def magic_names(ip) -> dict[str, set[str]]:
    """All magic names per kind (IPython loads some of its own lazily, so compare names, not objects)."""
    return {kind: set(ip.magics_manager.magics[kind]) for kind in ("line", "cell")}


def registry(ip) -> list[str]:
    names = {cls.__name__ for cls in _classes()}
    return sorted(k for k in ip.magics_manager.registry if k in names)


@pytest.fixture
def shell():
    ip = ipython_shell()
    if "nbopt" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "nbopt")
    yield ip
    if "nbopt" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "nbopt")


def test_load_registers_each_magic_once(shell):
    before = magic_names(shell)
    assert nbopt_magics(shell) == {"line": [], "cell": []}
    shell.run_line_magic("load_ext", "nbopt")
    found = nbopt_magics(shell)
    assert "profile_flops" in found["line"] and "profile_flops" in found["cell"]
    assert set(found["line"]) <= OURS
    assert registry(shell) == sorted(cls for _, cls in MAGICS)
    # nothing else in the shell was replaced or removed: only nbopt's names were added
    after = magic_names(shell)
    for kind in ("line", "cell"):
        assert after[kind] - before[kind] == set(found[kind]), kind
        assert before[kind] <= after[kind]
    # a second %load_ext is a no-op ("already loaded"), not a second registration
    shell.run_line_magic("load_ext", "nbopt")
    assert nbopt_magics(shell) == found


def test_reload_does_not_duplicate_and_magics_still_work(shell):
    shell.run_line_magic("load_ext", "nbopt")
    first = nbopt_magics(shell)
    for _ in range(3):
        shell.run_line_magic("reload_ext", "nbopt")
    assert nbopt_magics(shell) == first
    assert registry(shell) == sorted(cls for _, cls in MAGICS)
    import torch
    shell.user_ns.update(model=torch.nn.Linear(3, 2), x=torch.randn(4, 3))
    shell.run_cell_magic("profile_flops", "--no-latency -o prof", "y = model(x)")
    assert shell.user_ns["prof"].total_macs == 4 * 3 * 2


def test_unload_removes_every_magic_and_leaves_the_rest(shell):
    before = magic_names(shell)
    before_registry = set(shell.magics_manager.registry)
    shell.run_line_magic("load_ext", "nbopt")
    shell.run_line_magic("unload_ext", "nbopt")
    assert nbopt_magics(shell) == {"line": [], "cell": []}
    assert magic_names(shell) == before
    assert set(shell.magics_manager.registry) == before_registry
    assert "nbopt" not in shell.extension_manager.loaded
    with pytest.raises(Exception, match="profile_flops"):
        shell.run_line_magic("profile_flops", "model x")
    # and it can be loaded again afterwards
    shell.run_line_magic("load_ext", "nbopt")
    assert "profile_flops" in nbopt_magics(shell)["cell"]


KERNEL_CHECK = r'''
import json, gc
import torch, torch.nn.functional as F
from torch.nn.modules import module as _m
from torch.utils._python_dispatch import _get_current_dispatch_mode
from tests.snapshot import hook_counts, same_state
print(json.dumps({
    "global_hooks": [len(_m._global_forward_hooks), len(_m._global_forward_pre_hooks),
                     len(_m._global_forward_hooks_always_called)],
    "dispatch_mode": repr(_get_current_dispatch_mode()),
    "dispatch_stack": torch._C._len_torch_dispatch_stack(),
    "function_stack": torch._C._len_torch_function_stack(),
    "model_hooks": hook_counts(model),
    "same_state": same_state(model, fp),
    "training": model.training,
    "F_changed": sorted(k for k, v in F_before.items() if getattr(F, k, None) is not v),
    "torch_changed": sorted(k for k, v in torch_before.items() if getattr(torch, k, None) is not v),
    "macs": prof.total_macs,
}))
'''


def test_real_kernel_session_is_left_clean():
    """A real ipykernel: %load_ext nbopt, %%profile_flops on the demo model, then inspect the kernel."""
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import torch, torch.nn.functional as F\n"
            "import torch._dynamo  # torch rebinds torch.manual_seed once on this import; not nbopt's doing\n"
            "from nbopt import demo\n"
            "from tests.snapshot import state_fingerprint  # the kernel runs in the repository root\n"
            "model = demo.load_model(); x = demo.example_input()\n"
            "fp = state_fingerprint(model)\n"
            "F_before = dict(vars(F)); torch_before = {k: v for k, v in vars(torch).items() if not k.startswith('__')}"),
        nbformat.v4.new_code_cell("%load_ext nbopt"),
        nbformat.v4.new_code_cell("%%profile_flops --no-latency -o prof\ny = model(x)"),
        nbformat.v4.new_code_cell("%%profile_flops --repeat 2\ny = model(x)"),
        nbformat.v4.new_code_cell("%%profile_flops --no-latency\nmodel(torch.randn(1, 3, 8, 8))"),  # UsageError
        nbformat.v4.new_code_cell(KERNEL_CHECK),
    ]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": "."}})
    try:
        client.execute()
    except Exception as exc:  # no kernel spec on this machine: say so rather than pass silently
        pytest.skip(f"could not start a python3 kernel: {exc}")
    outs = [c.get("outputs", []) for c in nb.cells]
    for i in (0, 1, 2, 3):
        assert not [o for o in outs[i] if o.get("output_type") == "error"], (i, outs[i])
    assert any("text/html" in o.get("data", {}) for o in outs[2]), outs[2]
    # IPython shows a UsageError as one stderr line, "UsageError: <message>", with no traceback
    assert not [o for o in outs[4] if o.get("output_type") == "error"], outs[4]
    shown = "".join(o.get("text", "") for o in outs[4] if o.get("output_type") == "stream")
    assert shown.startswith("UsageError: the cell raised RuntimeError: Given groups=1"), shown
    assert "Traceback" not in shown and "site-packages/torch" not in shown, shown
    text = "".join(o.get("text", "") for o in outs[5] if o.get("output_type") == "stream")
    state = json.loads(text.strip().splitlines()[-1])
    assert state == {"global_hooks": [0, 0, 0], "dispatch_mode": "None", "dispatch_stack": 0, "function_stack": 0,
                     "model_hooks": {}, "same_state": True, "training": False, "F_changed": [],
                     "torch_changed": [], "macs": state["macs"]}
    assert state["macs"] > 0
