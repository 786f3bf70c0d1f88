"""Pruning: reversible magnitude masks, structured channel removal, fine-tuning (core, no display)."""
from __future__ import annotations

from .finetune import finetune
from .pruner import Pruner
from .result import PruneResult, prune

__all__ = ["Pruner", "prune", "PruneResult", "finetune"]
