"""Bad input gets the exact message users see: a ValueError/TypeError (API) or UsageError (magic) that names
the problem and the fix, with no chained torch traceback, and the model unchanged."""
from __future__ import annotations

import pytest
import torch
from IPython.core.error import UsageError
from torch import nn

import nbopt
from nbopt.errors import ForwardError, NboptError
from kernel_state import Snapshot, clean_exception


def api(name: str):
    """``nbopt.<name>``, or skip while that capability has not landed (lazy exports import on access)."""
    try:
        return getattr(nbopt, name)
    except (AttributeError, ImportError) as exc:
        pytest.skip(f"nbopt.{name} not available yet: {exc}")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()


X = torch.randn(2, 1, 6, 6)


def raises(exc_type, match: str, fn, *args, model: nn.Module | None = None, **kwargs):
    """Call ``fn``; assert the error type, the message, a clean exception, and an untouched model."""
    snap = Snapshot.take(model)
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    clean_exception(info.value)
    snap.assert_unchanged()
    return info.value


# ---------------------------------------------------------------- profiler (API)
@pytest.mark.parametrize("obj, got", [({"weight": torch.zeros(1)}, "dict"), (lambda x: x, "function"),
                                      (nn.Linear, "type"), (torch.zeros(3), "Tensor")])
def test_profile_rejects_non_modules(obj, got):
    exc = raises(TypeError, rf"model must be a torch\.nn\.Module, got {got}\. Pass the model object itself",
                 nbopt.profile, obj, X)
    assert "not `model(x)` or its state_dict" in str(exc)


def test_profile_rejects_unusable_inputs():
    m = small_cnn()
    raises(TypeError, r"inputs must be a tensor, a tuple of positional tensors or a dict of keyword arguments, "
                      r"got str\. Example: nbopt\.profile\(model, torch\.randn", nbopt.profile, m, "x", model=m)


SHAPE_ERROR = (r"^Sequential failed on inputs \(2, 1, 5, 5\) float32 at layer '3' \(Linear, given \(2, 72\) "
               r"float32\): RuntimeError: mat1 and mat2 shapes cannot be multiplied \(2x72 and 128x3\)\. Check the "
               r"input shape, dtype and device the model expects\.$")


@pytest.mark.parametrize("execution", ["auto", "real", "meta"])
def test_profile_wrong_shape_names_the_shapes_and_the_layer(execution):
    """Meta execution too: the same message as a real run, not a suggestion to run for real."""
    m = small_cnn()
    raises(ForwardError, SHAPE_ERROR, nbopt.profile, m, torch.randn(2, 1, 5, 5), latency=False,
           execution=execution, model=m)


DTYPE_ERRORS = [  # (model, input dtype, the message a real CPU run gives)
    (small_cnn, torch.int64, r"^Sequential failed on inputs \(2, 1, 6, 6\) int64 at layer '0' \(Conv2d, given "
                             r"\(2, 1, 6, 6\) int64\): RuntimeError: Input type \(long int\) and bias type \(float\) "
                             r"should be the same\. Check the input shape, dtype and device the model expects\.$"),
    (lambda: nn.Conv2d(1, 8, 3, bias=False), torch.int64,  # the meta kernel itself accepts this one
     r"^Conv2d failed on inputs \(2, 1, 6, 6\) int64: RuntimeError: expected scalar type Long but found Float\."),
    (lambda: nn.Conv2d(1, 8, 3, bias=False), torch.float16,
     r"^Conv2d failed on inputs \(2, 1, 6, 6\) float16: RuntimeError: expected scalar type Half but found Float\."),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), torch.int64,
     r"^Sequential failed on inputs \(2, 1, 6, 6\) int64 at layer '1' \(Linear, given \(2, 36\) int64\): "
     r"RuntimeError: mat1 and mat2 must have the same dtype, but got Long and Float\."),
    (lambda: nn.BatchNorm2d(1), torch.int64,
     r"^BatchNorm2d failed on inputs \(2, 1, 6, 6\) int64: NotImplementedError: \"batch_norm\" not implemented for "
     r"'Long'\. Check the input shape, dtype and device the model expects\.$"),
]


@pytest.mark.parametrize("execution", ["auto", "real", "meta"])
@pytest.mark.parametrize("make, dtype, match", DTYPE_ERRORS)
def test_profile_wrong_dtype_is_rejected_like_a_real_run(make, dtype, match, execution):
    m = make().eval()
    raises(ForwardError, match, nbopt.profile, m, X.to(dtype), latency=False, execution=execution, model=m)


class _NeedsValues(nn.Module):
    def forward(self, x):
        return x * x.sum().item()  # a value, not a shape: meta tensors have none


def test_profile_meta_only_failure_suggests_a_real_run():
    m = nn.Sequential(nn.Linear(4, 4), _NeedsValues()).eval()
    x = torch.randn(2, 4)
    raises(NboptError, r"^this model cannot run on meta tensors at layer '1' \(_NeedsValues, given \(2, 4\) float32\) "
                       r"\(RuntimeError: Tensor\.item\(\) cannot be called on meta tensors\), though it runs on real "
                       r"ones; count it with execution='real' \(or 'auto', which falls back by itself\)$",
           nbopt.profile, m, x, latency=False, execution="meta", model=m)
    assert nbopt.profile(m, x, latency=False, execution="auto").execution == "real"


def test_profile_wrong_device_says_how_to_move():
    m = nn.Linear(4, 3, device="meta")  # the only second device on a CPU-only machine
    params = list(m.parameters())
    # a meta model cannot be moved with model.to('cpu') (no values): the message says what works
    raises(NboptError, r"inputs are on cpu but the model's weights are on the meta device \(no values\): to count "
                       r"work without weights pass meta inputs too \(x\.to\('meta'\)\); to run it, create the "
                       r"weights with model\.to_empty\(device='cpu'\)", nbopt.profile, m, torch.randn(1, 4))
    assert list(m.parameters()) == params and all(p.device.type == "meta" for p in params)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("wrap", ["tensor", "tuple", "dict"])
def test_profile_rejects_nan_inf_inputs(bad, wrap):
    m = nn.Linear(4, 3)
    x = torch.tensor([[1.0, bad, 0.0, 0.0]])
    inputs = {"tensor": x, "tuple": (x,), "dict": {"input": x}}[wrap]
    raises(NboptError, r"inputs contain NaN or Inf values; clean the data \(e\.g\. torch\.nan_to_num\) first\.",
           nbopt.profile, m, inputs, model=m)


@pytest.mark.parametrize("kwargs, match", [
    ({"engine": "fvcore"}, r"unknown engine 'fvcore'; use one of \('aten', 'thop'\)"),
    ({"execution": "gpu"}, r"unknown execution 'gpu'; use one of \('auto', 'real', 'meta'\)"),
    ({"repeat": 0}, r"repeat must be at least 1, got 0"),
    ({"custom_ops": {"Linear": None}}, r"custom_ops must hold nn\.Module subclasses \(e\.g\. nn\.ReLU\), got 'Linear'"),
    ({"ignore_ops": [print]}, r"ignore_ops must hold nn\.Module subclasses"),
])
def test_profile_rejects_bad_options(kwargs, match):
    m = small_cnn()
    raises((NboptError, TypeError), match, nbopt.profile, m, X, model=m, **kwargs)


def test_profile_wrong_keyword_names_the_argument():
    m = small_cnn()
    raises(ForwardError, r"got an unexpected keyword argument 'y'", nbopt.profile, m, {"y": X}, latency=False,
           model=m)


def test_model_that_runs_nothing_reports_zero_not_garbage():
    """profile() of a model without ops is not an error, it is an honest zero (the magic errors, below)."""
    prof = nbopt.profile(nn.Sequential(), X, latency=False)
    assert (prof.total_macs, prof.total_flops, prof.total_params, prof.coverage) == (0, 0, 0, 1.0)


def test_compare_rejects_empty_and_non_modules():
    raises(TypeError, r"models must be a non-empty dict \{name: nn\.Module\}", nbopt.compare, {}, X)
    raises(TypeError, r"models\['b'\] must be a torch\.nn\.Module, got str", nbopt.compare,
           {"a": small_cnn(), "b": "resnet"}, X)


def test_table_queries_name_the_columns():
    prof = nbopt.profile(small_cnn(), X, latency=False)
    raises(NboptError, r"unknown column 'gmacs'; choose one of type, depth, calls", prof.top, by="gmacs")


# ---------------------------------------------------------------- magics
CELL_ERRORS = [
    ("--bogus", "model(x)", r"unrecognized arguments: --bogus; see `%profile_flops\?` for the options"),
    ("--by module", "model(x)", r"argument --by: invalid choice: 'module' \(choose from 'layer', 'type'\)"),
    ("--top three", "model(x)", r"--top needs a number of layers or 'all', got 'three'"),
    ("--repeat 0", "model(x)", r"repeat must be at least 1, got 0"),
    ("--no-latency", "y = 1 + 1", r"the code ran no torch\.nn\.Module; call a model in it, e\.g\. `model\(x\)`"),
    ("--no-latency", "model(torch.randn(2, 1, 5, 5))",
     r"the cell raised RuntimeError: mat1 and mat2 shapes cannot be multiplied .*fix the cell and run it again"),
    ("--no-latency", "model(x", r"the cell has a syntax error"),
    ("--ignore Relu", "model(x)", r"--ignore: 'Relu' is not a torch\.nn module type \(e\.g\. ReLU, Dropout"),
    ("--engine thop", "model(x)", r"--engine thop needs the exact model inputs: use the line form"),
    ("extra words", "model(x)", r"unexpected arguments 'extra words' in the cell form"),
]


@pytest.mark.parametrize("line, cell, match", CELL_ERRORS)
def test_profile_flops_cell_usage_errors(ipshell, line, cell, match):
    m = small_cnn()
    ipshell.user_ns.update(model=m, x=X, torch=torch)
    exc = raises(UsageError, match, ipshell.run_cell_magic, "profile_flops", line, cell, model=m)
    assert type(exc) is UsageError  # IPython prints a bare message only for UsageError itself


LINE_ERRORS = [
    ("model", r"line form needs a model and an input expression: %profile_flops MODEL INPUT_EXPR"),
    ("modl x", r"could not evaluate model `modl`: NameError: name 'modl' is not defined"),
    ("x x --no-latency", r"model must be a torch\.nn\.Module, got Tensor"),
    ("model x --topp 3", r"unrecognized arguments: --topp 3; see `%profile_flops\?`"),
    ("model torch.randn(2,1,6,6)*float('nan') --no-latency", r"inputs contain NaN or Inf values"),
    ("model x --engine fvcore", r"argument --engine: invalid choice: 'fvcore'"),
]


@pytest.mark.parametrize("line, match", LINE_ERRORS)
def test_profile_flops_line_usage_errors(ipshell, line, match):
    m = small_cnn()
    ipshell.user_ns.update(model=m, x=X, torch=torch)
    exc = raises(UsageError, match, ipshell.run_line_magic, "profile_flops", line, model=m)
    assert type(exc) is UsageError


# ---------------------------------------------------------------- pruning
@pytest.mark.parametrize("amount", [-0.1, 1, 1.5, float("nan"), True])
def test_prune_amount_out_of_range(amount):
    prune = api("prune")
    m = small_cnn()
    raises(NboptError, rf"amount must be a fraction in \[0, 1\) \(0\.5 removes half\), got {amount!r}; "
                       r"amount=1 would remove everything\.", prune, m, X, amount=amount, latency=False,
           progress=False, model=m)


@pytest.mark.parametrize("amount", [-0.1, 1, 1.5])
def test_pruner_set_out_of_range_keeps_previous_setting(amount):
    Pruner = api("Pruner")
    m = small_cnn()
    pruner = Pruner(m, X, progress=False).set(0.3)
    snap = Snapshot.take(pruner.model)
    raises(NboptError, r"amount must be a fraction in \[0, 1\)", pruner.set, amount, model=m)
    snap.assert_unchanged()  # the working copy still holds the 0.3 setting
    assert pruner.setting["amount"] == 0.3


@pytest.mark.parametrize("kw", ["layers", "exclude"])
def test_prune_unknown_layer_names(kw):
    prune = api("prune")
    m = small_cnn()
    raises(NboptError, rf"{kw}= names layer 'conv9', which the model does not have; use a qualified module "
                       r"name such as 0, 3", prune, m, X, amount=0.5, latency=False, progress=False,
           model=m, **{kw: ["conv9"]})


def test_pruner_bad_inputs():
    Pruner = api("Pruner")
    m = small_cnn()
    raises(TypeError, r"model must be a torch\.nn\.Module, got str", Pruner, "m", X)
    raises(NboptError, r"example_inputs contain NaN or Inf values", Pruner, m, X * float("nan"), model=m)
    raises(ForwardError, r"failed on inputs \(2, 1, 5, 5\) float32", Pruner, m, torch.randn(2, 1, 5, 5), model=m)
    raises(NboptError, r"no prunable Conv/Linear layer is left to prune", Pruner, nn.Sequential(nn.ReLU()), X)


@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_pruner_rejects_nan_weights(value, kind):
    Pruner = api("Pruner")
    m = small_cnn()
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = value
    msg = (rf"parameter '0\.weight' holds {kind} values \(1 of {m[0].weight.numel()}\), so its weights cannot be "
           r"ranked for pruning\. Fix the model first: reload a good checkpoint or find where training diverged "
           r"\(torch\.isfinite\(model\.state_dict\(\)\['0\.weight'\]\)\.all\(\) is False\)\.$")
    raises(NboptError, msg, Pruner, m, X, progress=False, model=m)  # the snapshot compares NaN bit for bit
    raises(NboptError, msg, nbopt.prune, m, X, amount=0.5, progress=False, model=m)


PRUNE_MAGIC_ERRORS = [
    ("model --inputs x --amount 1.5", r"amount must be a fraction in \[0, 1\)"),
    ("model --inputs x --amount 0.5 --layers conv9", r"names layer 'conv9', which the model does not have"),
    ("model --inputs x", r"give --amount A \(a fraction in \[0, 1\)\) or --threshold T"),
    ("model --inputs x --amount 0.5 --bogus", r"unrecognized arguments: --bogus; see `%prune\?`"),
    ("model --inputs x --amount 0.5 --threshold 0.1", r"give either --amount or --threshold, not both"),
]


@pytest.mark.parametrize("line, match", PRUNE_MAGIC_ERRORS)
def test_prune_magic_usage_errors(ipshell, line, match):
    api("prune")
    if "prune" not in ipshell.magics_manager.magics["line"]:
        pytest.skip("%prune not registered yet")
    m = small_cnn()
    ipshell.user_ns.update(model=m, x=X)
    exc = raises(UsageError, match, ipshell.run_line_magic, "prune", line + " --no-latency", model=m)
    assert type(exc) is UsageError


def test_every_registered_magic_rejects_unknown_options(ipshell):
    """Whatever magics have landed, an unknown option is a bare UsageError pointing at the magic's help."""
    names = [n for n in ("profile_flops", "prune", "quantize", "export")
             if n in ipshell.magics_manager.magics["line"]]
    assert "profile_flops" in names
    for name in names:
        with pytest.raises(UsageError) as info:
            ipshell.run_line_magic(name, "model --definitely-not-an-option 3")
        assert type(info.value) is UsageError
        assert f"see `%{name}?`" in str(info.value), (name, str(info.value))
        clean_exception(info.value)



# ---------------------------------------------------------------- quantization
@pytest.mark.parametrize("kw, bits", [("weight_bits", 0), ("weight_bits", 1), ("weight_bits", 17),
                                      ("weight_bits", 2.5), ("act_bits", 1), ("act_bits", 17)])
def test_quantize_bit_widths_out_of_range(kw, bits):
    quantize = api("quantize")
    m = small_cnn()
    raises(NboptError, rf"{kw}={bits} is not supported: use an integer from 2 to 16", quantize, m, X,
           progress=False, model=m, **{kw: bits})


@pytest.mark.parametrize("bits", [0, 1, 17])
def test_sensitivity_bit_widths_out_of_range(bits):
    sensitivity = api("sensitivity")
    m = small_cnn()
    raises(NboptError, rf"bits={bits} is not supported: use an integer from 2 to 16", sensitivity, m, X,
           bits=(bits,), progress=False, model=m)


@pytest.mark.parametrize("empty", [[], (), iter([])])
def test_quantize_and_sensitivity_empty_calibration(empty):
    quantize, sensitivity = api("quantize"), api("sensitivity")
    m = small_cnn()
    raises(NboptError, r"the calibration data is empty; pass at least one batch", quantize, m, empty,
           progress=False, model=m)
    raises(NboptError, r"the calibration data is empty; pass at least one batch", sensitivity, m, [],
           progress=False, model=m)


def test_quantize_bad_calibration_inputs():
    quantize = api("quantize")
    m = small_cnn()
    raises(NboptError, r"calibration inputs contain NaN or Inf values; clean the data", quantize, m,
           X * float("nan"), progress=False, model=m)
    raises(NboptError, r"calibration batch 0 could not run through the model: .*failed on inputs \(4, 1, 5, 5\) "
                       r"float32: RuntimeError: mat1 and mat2 shapes cannot be multiplied",
           quantize, m, torch.randn(4, 1, 5, 5), progress=False, model=m)
    raises(NboptError, r"layer_bits names 'conv9', which is not a Conv/Linear layer of the model\. "
                       r"Quantizable layers: 0, 3", quantize, m, X, layer_bits={"conv9": 4}, progress=False, model=m)
    raises(TypeError, r"model must be a torch\.nn\.Module, got str", quantize, "m", X)


@pytest.mark.parametrize("bad, kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
@pytest.mark.parametrize("entry", ["quantize", "sensitivity"])
def test_quantize_rejects_non_finite_weights(bad, kind, entry):
    fn = api(entry)
    m = small_cnn()
    with torch.no_grad():
        m[3].weight[0, 0] = bad
    raises(NboptError, rf"parameter '3\.weight' holds {kind} values \(1 of 384\), so no quantization scale can "
                       r"represent it\. Fix the model first: reload a good checkpoint or find where training diverged "
                       r"\(torch\.isfinite\(model\.state_dict\(\)\['3\.weight'\]\)\.all\(\) is False\)\.$",
           fn, m, X, progress=False, model=m)  # the snapshot compares NaN bit for bit


@pytest.mark.parametrize("empty", [X[:0], [X[:0], X[:0]]])
@pytest.mark.parametrize("entry", ["quantize", "sensitivity"])
def test_quantize_zero_sample_calibration_tensor(empty, entry):
    fn = api(entry)
    m = small_cnn()
    raises(NboptError, r"^the calibration data is empty; pass at least one batch with samples \(e\.g\. a tensor of "
                       r"inputs\); batches of 0 samples do not count\.$", fn, m, empty, progress=False, model=m)


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("where, reason, fix", [
    ("/nonexistent-nbopt/dir/model.onnx", r"No such file or directory \(/nonexistent-nbopt/dir\)",
     r"create the folder first \(os\.makedirs\)"),
    ("{file}/model.onnx", r"Not a directory \(.*a-file\)", r"choose a writable folder"),
])
def test_export_path_that_cannot_be_written(tmp_path, where, reason, fix):
    export = api("export")
    pytest.importorskip("onnx")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = where.format(file=blocker)
    m = small_cnn()
    raises(NboptError, rf"cannot write the export to .*{reason}\. Pass path= somewhere you can write; {fix}",
           export, m, X, "onnx", path, latency=False, model=m)
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_export_unknown_format():
    export = api("export")
    m = small_cnn()
    raises(NboptError, r"unknown export format 'tflite'; use one of onnx, torchscript, executorch\.",
           export, m, X, "tflite", model=m)


# ---------------------------------------------------------------- bit widths that are not integers (issue 17)
@pytest.mark.parametrize("kw, bits, shown", [
    ("weight_bits", 3.5, r"3\.5"), ("weight_bits", 8.0, r"8\.0"), ("weight_bits", "8", r"'8'"),
    ("weight_bits", True, "True"), ("act_bits", "8", r"'8'"), ("act_bits", 4.5, r"4\.5")])
def test_quantize_bit_widths_not_integers(kw, bits, shown):
    quantize = api("quantize")
    m = small_cnn()
    raises(NboptError, rf"^{kw}={shown} is not supported: use an integer from 2 to 16", quantize, m, X,
           progress=False, model=m, **{kw: bits})


def test_quantize_layer_bits_not_integers():
    quantize = api("quantize")
    m = small_cnn()
    raises(NboptError, r"^layer_bits\['0'\]=3\.5 is not supported: use an integer from 2 to 16\.$", quantize, m, X,
           layer_bits={"0": 3.5}, progress=False, model=m)


@pytest.mark.parametrize("bits, shown", [((3.5,), r"3\.5"), (("8",), r"'8'"), ("8", r"'8'"), ((8, True), "True"),
                                         (3.5, r"3\.5"), ((torch.tensor(8.0),), r"tensor\(8\.\)")])
def test_sensitivity_bit_widths_not_integers(bits, shown):
    sensitivity = api("sensitivity")
    m = small_cnn()
    raises(NboptError, rf"^bits={shown} is not supported: use an integer from 2 to 16", sensitivity, m, X,
           bits=bits, progress=False, model=m)


@pytest.mark.parametrize("empty", [(), []])
def test_sensitivity_no_bit_widths(empty):
    sensitivity = api("sensitivity")
    m = small_cnn()
    raises(NboptError, rf"^bits={empty!r} is empty: give at least one weight bit width from 2 to 16, e\.g\. "
                       r"bits=\(8, 6, 4\)\.$".replace("[]", r"\[\]").replace("()", r"\(\)"), sensitivity, m, X,
           bits=empty, progress=False, model=m)


# ---------------------------------------------------------------- a model with no Conv/Linear module (issue 17)
class _FunctionalOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 1, 3, 3))

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.w).flatten(1)


def test_simulate_and_sensitivity_refuse_a_functional_only_model():
    quantize, sensitivity = api("quantize"), api("sensitivity")
    m = _FunctionalOnly().eval()
    err = raises(NboptError, r"^mode='simulate' has nothing to quantize: the model \(_FunctionalOnly\) has no "
                             r"nn\.Conv1d/Conv2d/Conv3d, nn\.Linear or linear-like \(transformers' Conv1D\) module", quantize, m, X, progress=False, model=m)
    assert "mode='dynamic' or mode='int8'" in str(err)
    err = raises(NboptError, r"^sensitivity has no layer to measure: the model \(_FunctionalOnly\) has no "
                             r"nn\.Conv1d/Conv2d/Conv3d, nn\.Linear or linear-like \(transformers' Conv1D\) module", sensitivity, m, X, progress=False,
                 model=m)
    assert "quantize(model, calib, mode='dynamic') or mode='int8'" in str(err)
