"""The demo LM's text: Python's own documentation, shipped with every CPython install (no download).

Documents: each ``pydoc_data.topics`` entry (the language reference pages that ``help()`` shows) and, for
each standard-library source file, its module, class and function docstrings (read with ``ast``: nothing is
imported or run). The split is fixed: a document is held out when the SHA-1 of its name falls in the last
tenth. The text depends on the Python version; :data:`CORPUS_SHA256` records the hash the shipped model was
trained on, and :func:`corpus_matches` says whether this interpreter gives the same text.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import sys
import sysconfig
from pathlib import Path

#: directories of the standard library left out: tests, GUIs' demos, vendored packages
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "turtledemo", "ensurepip",
             "__pycache__", "lib2to3", "pydoc_data"}
HELDOUT_FRACTION = 0.1
#: the Python version and corpus hash of the shipped weights (see train.py's record)
PYTHON_VERSION = "3.11.7"
CORPUS_SHA256 = "60d4fafb33f9aae0fafa4d81fa2831b19ff4198d01278b6a256b34bd192506c8"


def _docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    docs = [ast.get_docstring(n, clean=True) for n in nodes]
    return [d for d in docs if d and len(d) >= 40]


@functools.lru_cache(maxsize=1)
def documents() -> tuple[tuple[str, str], ...]:
    """(name, text) of every document, in a fixed order: the topics, then the stdlib files by path."""
    from pydoc_data.topics import topics
    docs = [(f"topic:{key}", topics[key].strip()) for key in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        text = "\n\n".join(_docstrings(path.read_text(encoding="utf-8", errors="replace")))
        if text:
            docs.append((f"module:{rel.as_posix()}", text))
    return tuple(docs)


def is_heldout(name: str) -> bool:
    """A document's split, fixed by the hash of its name (not by order or by a random generator)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16 ** 8 >= 1 - HELDOUT_FRACTION


@functools.lru_cache(maxsize=2)
def text(split: str = "train") -> str:
    """All documents of ``split`` ("train" or "heldout"), separated by blank lines."""
    if split not in ("train", "heldout"):
        from ...errors import InputError
        raise InputError(f"split={split!r} is not 'train' or 'heldout'; pick one of those.")
    want = split == "heldout"
    return "\n\n".join(t for name, t in documents() if is_heldout(name) == want)


def corpus_sha256() -> str:
    """SHA-256 of both splits' text on this interpreter."""
    h = hashlib.sha256()
    for split in ("train", "heldout"):
        h.update(text(split).encode("utf-8"))
    return h.hexdigest()


def corpus_matches() -> bool:
    """Whether this interpreter's corpus is the one the shipped model was trained and measured on."""
    return corpus_sha256() == CORPUS_SHA256


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))
