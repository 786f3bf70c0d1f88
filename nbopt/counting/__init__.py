"""How much work a model does: ATen op formulas, the dispatch-mode counter, module attribution, thop."""
from .formulas import FORMULAS, Cost, register_formula
from .counter import OpCounter, count_cost
from .attribution import OUTSIDE, ModuleNames, ModuleStats, ModuleTracker

__all__ = ["FORMULAS", "Cost", "register_formula", "OpCounter", "count_cost", "OUTSIDE", "ModuleNames",
           "ModuleStats", "ModuleTracker"]
