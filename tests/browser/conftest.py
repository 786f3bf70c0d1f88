"""Real-browser tests: skipped when chromium, node or playwright-core is missing (``make browser-deps``);
``jupyter`` starts servers through harness.py and always stops them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from harness import HERE, missing_browser_deps, start, stop


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = missing_browser_deps()
    if reason:
        for item in items:
            if HERE in Path(str(item.fspath)).parents:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture()
def jupyter(tmp_path: Path) -> Iterator[Callable[[str, Path], dict[str, Any]]]:
    """``jupyter(app, notebook_path)``: lab | notebook | voila serving a copy of the notebook; stopped afterwards."""
    procs = []

    def _start(app: str, notebook: Path) -> dict[str, Any]:
        proc, server = start(app, notebook, tmp_path)
        procs.append(proc)
        return server

    yield _start
    for proc in procs:
        stop(proc)
