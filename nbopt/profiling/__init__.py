"""Where a model's compute goes: the per-layer profile and the counting engine behind it."""
from .api import Profile, compare, profile, profile_code
from .counter import OpCounter, count_cost
from .formulas import FORMULAS, Cost, register_formula

__all__ = ["Profile", "profile", "profile_code", "compare", "register_formula", "Cost", "FORMULAS", "OpCounter",
           "count_cost"]
