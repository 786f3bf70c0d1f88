"""Where a model's compute goes: the per-layer profile and the counting engine behind it."""
from .api import compare, profile, profile_code
from .counter import OpCounter, count_cost
from .formulas import FORMULAS, Cost, Formula, FormulaRegistry, register_formula
from .result import Profile

__all__ = ["Profile", "profile", "profile_code", "compare", "register_formula", "Cost", "Formula",
           "FormulaRegistry", "FORMULAS", "OpCounter", "count_cost"]
