"""The error family of nbopt.errors: one base for every deliberate error, the right builtin bases, require()."""
from __future__ import annotations

import pytest

import nbopt
from nbopt import errors


@pytest.mark.parametrize("cls, builtins", [
    (errors.NboptError, (ValueError,)),
    (errors.InputError, (ValueError,)),
    (errors.InputTypeError, (ValueError, TypeError)),
    (errors.ForwardError, (ValueError,)),
    (errors.UnsupportedModelError, (ValueError,)),
    (errors.MissingDependencyError, (ValueError, ImportError)),
])
def test_every_deliberate_error_is_an_nbopt_error_with_its_builtin_bases(cls, builtins):
    assert issubclass(cls, errors.NboptError)
    for base in builtins:
        assert issubclass(cls, base)


def test_require_returns_the_module_or_names_the_extra():
    import math

    assert errors.require("math", extra="x", purpose="p") is math
    with pytest.raises(errors.MissingDependencyError) as err:
        errors.require("nbopt_no_such_module.sub", extra="int8", purpose="the int8 path")
    assert str(err.value) == 'the int8 path needs nbopt_no_such_module; install it with `pip install "nbopt[int8]"`.'
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(errors.MissingDependencyError, match="needs Torch-Pruning;"):
        errors.require("nbopt_no_such_module", extra="prune", purpose="structured pruning", package="Torch-Pruning")


def test_wrong_kinds_of_input_are_input_type_errors():
    with pytest.raises(errors.InputTypeError, match="model must be a torch.nn.Module"):
        nbopt.profile({"weight": 1}, None)
    with pytest.raises(errors.InputTypeError, match="custom_ops must hold nn.Module subclasses"):
        nbopt.profile(nbopt.demo.load_model(), nbopt.demo.example_input(), custom_ops={len: None}, latency=False)


def test_public_api_exports_the_family():
    for name in ("NboptError", "InputError", "ForwardError", "UnsupportedModelError", "MissingDependencyError",
                 "PartialResultWarning"):
        assert getattr(nbopt, name) is getattr(errors, name)
