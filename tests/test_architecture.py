"""The house rules of docs/architecture.md, enforced: imports point one way, the core runs without the notebook stack.

* A core module (anything in ``nbopt/`` outside the front-ends) never imports IPython, ipywidgets, matplotlib
  or a front-end module, at module level or inside a function. The one exception: a function may import
  ``nbopt.display`` lazily (a result's ``_repr_html_``/``plot``), as pandas' ``.plot`` imports matplotlib;
  ``nbopt/__init__.py`` may import ``nbopt.magics`` inside ``load_ipython_extension``.
* Front-ends import the core, never the other way round; ``nbopt.display`` (drawing) imports no other front-end.
* In a fresh interpreter where IPython, ipywidgets and matplotlib cannot be imported, every core module imports
  and ``nbopt.profile`` works (``pip install nbopt`` without the ``notebook`` extra).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nbopt"
NOTEBOOK_STACK = ("IPython", "ipywidgets", "matplotlib")
FRONT_ENDS = ("nbopt.display", "nbopt.magics", "nbopt.panels", "nbopt.cli", "nbopt.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_front_end(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FRONT_ENDS)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module imported, inside a function?) for every import statement of ``path``."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
                names = [target] if node.module else [f"{base}.{a.name}" for a in node.names]
            else:
                names = [node.module]
            out += [(n, id(node) in nested) for n in names]
    return out


def core_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not is_front_end(module_name(p))]


def test_there_are_core_and_front_end_modules():
    names = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert len(core_files()) > 30
    assert {"nbopt.display.figures", "nbopt.magics", "nbopt.panels", "nbopt.cli"} <= names


def test_core_never_imports_the_notebook_stack_or_a_front_end():
    bad = []
    for path in core_files():
        me = module_name(path)
        for target, in_function in imports(path):
            top = target.split(".")[0]
            if top in NOTEBOOK_STACK:
                bad.append(f"{me} imports {target}")
            elif is_front_end(target):
                lazy_display = in_function and target.startswith("nbopt.display")
                extension_hook = in_function and me == "nbopt" and target.startswith("nbopt.magics")
                if not (lazy_display or extension_hook):
                    bad.append(f"{me} imports front-end {target}" + ("" if in_function else " at module level"))
    assert not bad, "core modules must not import the notebook stack or front-ends:\n" + "\n".join(bad)


def test_display_imports_no_other_front_end():
    bad = [f"{module_name(p)} imports {t}" for p in sorted((PACKAGE / "display").rglob("*.py"))
           for t, _ in imports(p) if is_front_end(t) and not t.startswith("nbopt.display")]
    assert not bad, bad


def test_core_imports_and_profiles_without_the_notebook_stack():
    modules = [module_name(p) for p in core_files()]
    code = f"""
import sys
for name in {NOTEBOOK_STACK!r}:
    sys.modules[name] = None          # `import name` now raises ImportError, as when it is not installed
import importlib
for m in {modules!r}:
    importlib.import_module(m)
import nbopt
from nbopt import demo
p = nbopt.profile(demo.load_model(), demo.example_input(2), latency=False)
assert p.total_macs == 2 * nbopt.profile(demo.load_model(), demo.example_input(1), latency=False).total_macs
loaded = sorted(n for n in sys.modules if n.split('.')[0] in {NOTEBOOK_STACK!r} and sys.modules[n] is not None)
assert not loaded, loaded
print("ok", len({modules!r}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_front_ends_without_the_notebook_extra_name_it():
    """On a core-only install the panels and figures fail with the extra to install, not a bare ImportError."""
    code = """
import sys
sys.modules["ipywidgets"] = None
sys.modules["matplotlib"] = None
from nbopt.errors import MissingDependencyError
for what in ("panels", "figures"):
    try:
        if what == "panels":
            import nbopt.panels
        else:
            from nbopt.display.figures import pyplot
            pyplot()
    except MissingDependencyError as exc:
        assert 'pip install "nbopt[notebook]"' in str(exc), exc
        assert isinstance(exc, ImportError)
    else:
        raise AssertionError(what + " imported without its dependency")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
