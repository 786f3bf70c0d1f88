"""Compression search: Optuna studies over pruning, precision and recovery, in this process, in local worker
processes or on a dask cluster."""
from __future__ import annotations

from .api import search
from .result import SearchResult
from .space import Config, SearchSpace, default_space

__all__ = ["search", "SearchResult", "SearchSpace", "Config", "default_space"]
