"""The Binder files: repo2docker's conventions, CPU-only torch, the package installed from the repo.

What is verified here (no Docker and no network beyond the package registries on this machine):
- ``jupyter-repo2docker --no-build --debug .`` (when installed) renders a Dockerfile that installs
  binder/requirements.txt, runs binder/postBuild and uses Python 3.11 from binder/runtime.txt;
- binder/requirements.txt parses as pip requirements, takes torch from PyTorch's CPU-only index and
  pins torch/torchvision to the versions in constraints.txt;
- ``pip install --dry-run`` of those requirements against constraints.txt resolves in this venv and
  would change nothing (the CPU index line is left out: only PyPI is reachable here);
- binder/postBuild is an executable bash script with ``set -e`` that installs the package from the repo
  without re-resolving dependencies, and passes ``bash -n``;
- an interpreter with these requirements imports nbopt (this venv), and tests/test_notebooks.py executes
  notebook 01 in a fresh kernel of it;
- every notebook has a README launch link and its own badge made from the one slug in binder/github-slug
  (``python binder/links.py --slug owner/name --write`` changes them all; tried here on a copy).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _requirements() -> tuple[list[str], list[Requirement]]:
    options, reqs = [], []
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
        else:
            reqs.append(Requirement(line))
    return options, reqs


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_binder_folder_has_repo2docker_files():
    assert (BINDER / "requirements.txt").is_file()
    assert (BINDER / "postBuild").is_file()
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_requirements_use_cpu_only_torch_pinned_like_constraints():
    options, reqs = _requirements()
    assert options == [f"--extra-index-url {CPU_INDEX}"]
    by_name = {r.name.lower(): r for r in reqs}
    pins = _constraints()
    for name in ("torch", "torchvision"):
        assert name in by_name, f"{name} missing from binder/requirements.txt"
        assert str(by_name[name].specifier) == f"=={pins[name]}"
    # every runtime dependency of the package is listed (postBuild installs nbopt with --no-deps)
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # ... and so is the notebook extra the tutorials need (magics, panels, figures)
    for dep in project["dependencies"] + project["optional-dependencies"]["notebook"]:
        assert Requirement(dep).name.lower() in by_name, f"binder/requirements.txt lacks {dep}"


def test_every_requirement_is_pinned_and_agrees_with_constraints():
    """A Binder build next year gets the stack the suite ran: every line is ``==``, and the packages
    constraints.txt pins (torch, executorch, transformers, optuna, dask, ...) have the same version."""
    _, reqs = _requirements()
    unpinned = [str(r) for r in reqs if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    assert not unpinned, f"binder/requirements.txt leaves these unpinned: {unpinned}"
    pins = _constraints()
    by_name = {r.name.lower(): next(iter(r.specifier)).version for r in reqs}
    differ = {n: (by_name[n], v) for n, v in pins.items() if n in by_name and by_name[n] != v}
    assert not differ, f"binder pins differ from constraints.txt (binder, constraints): {differ}"
    for name in ("torchao", "onnxruntime", "executorch"):
        assert name in by_name, f"{name} missing from binder/requirements.txt"


def test_requirements_resolve_against_constraints_without_changes(tmp_path):
    """A dry run in this venv: every requirement is satisfiable and nothing (torch least of all) changes."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join(str(r) for r in _requirements()[1]) + "\n")
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report),
                           "-c", str(ROOT / "constraints.txt"), "-r", str(reqs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    would_install = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                     for i in json.loads(report.read_text())["install"]}
    assert "torch" not in would_install and "torchvision" not in would_install, would_install
    assert would_install == {}, f"the venv lacks Binder requirements: {would_install}"


def test_postbuild_installs_the_package_with_set_e():
    script = BINDER / "postBuild"
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert script.stat().st_mode & 0o111, "postBuild must be executable"
    commands = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands[0] == "set -e"
    assert any(re.search(r"pip install .*--no-deps .*-e \.$", c) for c in commands), commands
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_environment_imports_nbopt():
    proc = subprocess.run([sys.executable, "-c", "import nbopt, nbopt.demo; print(nbopt.__version__)"],
                          capture_output=True, text=True, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __import__("nbopt").__version__


@pytest.mark.skipif(shutil.which("jupyter-repo2docker") is None
                    and not (Path(sys.executable).parent / "jupyter-repo2docker").exists(),
                    reason="jupyter-repo2docker not installed (pip install -e '.[dev]' installs it)")
def test_repo2docker_renders_the_build():
    exe = shutil.which("jupyter-repo2docker") or str(Path(sys.executable).parent / "jupyter-repo2docker")
    proc = subprocess.run([exe, "--no-build", "--debug", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "python=3.11" in out
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in out
    assert "./binder/postBuild" in out
    # with a binder/ folder, the root pyproject.toml is not installed by repo2docker itself
    assert "pip install --no-cache-dir ." not in out


def _links_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("binder_links", BINDER / "links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_has_a_launch_link_to_the_one_slug():
    links = _links_module()
    slug = links.read_slug()
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", slug)
    readme = (ROOT / "README.md").read_text()
    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert names
    for name in names:
        url = f"https://mybinder.org/v2/gh/{slug}/HEAD?urlpath=lab/tree/notebooks/{name}"
        assert url in readme, f"README.md lacks the Binder launch link for {name}"
        assert url in (ROOT / "notebooks" / name).read_text(), f"{name} lacks its own Binder badge"
    assert links.problems(slug) == []
    # while the slug is the placeholder, the README says so next to the links
    assert ("placeholders (`ORG/REPO`)" in readme) == (slug == links.PLACEHOLDER)


def test_setting_the_slug_rewrites_every_link(tmp_path, monkeypatch):
    """On a copy: --slug owner/name --write points README and notebooks at it and drops the placeholder note."""
    links = _links_module()
    (tmp_path / "binder").mkdir()
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".*"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copy(BINDER / "github-slug", tmp_path / "binder" / "github-slug")
    monkeypatch.setattr(links, "ROOT", tmp_path)
    monkeypatch.setattr(links, "SLUG_FILE", tmp_path / "binder" / "github-slug")
    before = {p.name: json.loads(p.read_text()) for p in (tmp_path / "notebooks").glob("*.ipynb")}
    original = links.read_slug()
    assert links.main(["--slug", "octocat/nbopt", "--write"]) == 0
    assert links.read_slug() == "octocat/nbopt" and links.problems("octocat/nbopt") == []
    readme = (tmp_path / "README.md").read_text()
    assert "placeholders" not in readme and "/gh/ORG/REPO/" not in readme
    for p in (tmp_path / "notebooks").glob("*.ipynb"):  # still valid JSON, only the links changed
        text = p.read_text().replace("/gh/octocat/nbopt/", f"/gh/{original}/")
        assert json.loads(text) == before[p.name]
    with pytest.raises(SystemExit):
        links.main(["--slug", "not a slug"])


def test_binder_readme_says_how_to_shut_kernels_down_and_save_widget_state():
    """mybinder.org has about 2 GB: the README says to shut earlier kernels down, and how panels are kept."""
    text = (BINDER / "README.md").read_text()
    for needed in ("2 GB", "Close and Shut Down Notebook", "Shut Down All Kernels", "Save Widget State Automatically",
                   "--ExecutePreprocessor.store_widget_state=True", "1.5 GiB"):
        assert needed in text, f"binder/README.md does not mention {needed!r}"
