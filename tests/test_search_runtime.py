"""The search's fp32 runtime choice (eager torch or the exported graph in onnxruntime) and recovery epochs as a
search dimension: trials build, SearchResult.build rebuilds them, outputs match the torch model, and studies
written before these choices existed still resume and rebuild."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nbopt import demo
from nbopt.autosearch import SearchSpace, search
from nbopt.autosearch.build import build_config
from nbopt.autosearch.space import Config, config_from_params
from nbopt.errors import InputError
from nbopt.pruning.finetune import finetune

pytest.importorskip("optuna")
pytest.importorskip("onnxruntime")

# the keys a SearchSpace fingerprint had before the runtime and epochs choices (what older studies stored)
OLD_KEYS = {"groups", "amount_max", "quant", "backends", "bit_layers", "recover", "step"}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return demo.load_model()


def run(model, storage, n, space, **kw):
    return search(model, demo.example_input(1), calib=demo.calibration_data(64), evaluate=demo.evaluate,
                  space=space, n_trials=n, storage=storage, seed=0, n_startup=3, repeat=3, references=False, **kw)


def test_onnxruntime_fp32_trial_rebuilds_and_matches_torch(model, tmp_path):
    space = SearchSpace(groups={}, amount_max=0.3, quant=("fp32",), runtimes=("onnxruntime",))
    r = run(model, tmp_path / "ort.db", 2, space)
    assert (r.trials["state"] == "COMPLETE").all() and (r.trials["param:runtime"] == "onnxruntime").all()
    x = demo.example_input(360)  # another batch than the one it was exported on: the batch dimension is free
    t = r.trials.index[-1]  # a sampled (pruned) trial; trial 0 is rebuilt below through its export
    program = r.build(t)
    assert type(program).__name__ == "OrtModule"
    assert r.trials.loc[t, "size_bytes"] == len(program.onnx_bytes)
    assert r.trials.loc[t, "accuracy"] == demo.evaluate(program) and r.trials.loc[t, "param:amount"] > 0
    cfg = config_from_params(r._params(t))
    assert cfg.runtime == "onnxruntime"
    cfg.runtime = "torch"
    eager, _ = build_config(model, demo.example_input(1), cfg, calib=demo.calibration_data(64))
    with torch.no_grad():
        torch.testing.assert_close(program(x), eager(x), atol=1e-4, rtol=1e-4)
    assert r.config(0)["runtime"] == "onnxruntime" and r.config(0)["amount"] == 0.0  # trial 0: uncompressed
    exported, result = r.build(0, export=True, path=tmp_path / "t0.onnx")
    assert result.path.read_bytes() == exported.onnx_bytes  # the program's own graph, saved as it runs


def test_both_runtimes_are_sampled_under_one_parameter(model, tmp_path):
    space = SearchSpace(groups={}, amount_max=0.2, quant=("fp32",), runtimes=("torch", "onnxruntime"))
    r = run(model, tmp_path / "both.db", 4, space)
    assert set(r.trials["param:runtime"]) == {"torch", "onnxruntime"}
    for kind, t in r.trials.reset_index().groupby("param:runtime")["trial"].first().items():
        assert type(r.build(t)).__name__ == {"onnxruntime": "OrtModule", "torch": "DigitsNet"}[kind]


def test_studies_without_the_new_choices_resume_and_rebuild(model, tmp_path):
    old = SearchSpace(groups={"block1.conv1.0": 0.6}, amount_max=0.3, quant=("fp32",))
    assert set(old.fingerprint()) == OLD_KEYS  # what a study stored before runtimes/epochs existed
    db = tmp_path / "old.db"
    first = run(model, db, 2, old)
    assert not any(c in first.trials for c in ("param:runtime", "param:epochs"))
    again = run(model, db, 1, SearchSpace(groups={"block1.conv1.0": 0.6}, amount_max=0.3, quant=("fp32",)))
    assert len(again.trials) == 3 and (again.trials["state"] == "COMPLETE").all()
    assert again.trials.loc[1, "accuracy"] == demo.evaluate(again.build(1))
    assert type(again.build(1)).__name__ == "DigitsNet"
    params = {"amount": 0.2, "prune:a.b": 0.4, "quant": "fp32", "recover": "finetune"}  # an old trial's params
    assert config_from_params(params) == Config(amount=0.2, overrides={"a.b": 0.4}, recover="finetune")
    assert config_from_params(params).runtime == "torch" and config_from_params(params).epochs is None
    new = SearchSpace(groups={"block1.conv1.0": 0.6}, amount_max=0.3, quant=("fp32",),
                      runtimes=("torch", "onnxruntime"))
    with pytest.raises(InputError, match="searched something else"):  # another space is another study
        run(model, db, 1, new)


def test_recovery_epochs_and_rate_are_search_dimensions(model, tmp_path):
    space = SearchSpace(groups={}, amount_max=0.5, step=0.25, quant=("fp32",), recover=("finetune",), epochs=(1, 2),
                        lrs=(1e-3, 3e-3))
    loader = demo.train_loader(seed=0)
    order = loader.generator.get_state()
    r = run(model, tmp_path / "ep.db", 3, space, train_data=loader, recover_epochs=5)
    assert torch.equal(loader.generator.get_state(), order)  # the user's loader shuffles as it did before
    assert set(r.trials["param:epochs"]) <= {1, 2} and r.trials["param:epochs"].notna().all()
    assert set(r.trials["param:lr"]) <= {1e-3, 3e-3} and r.trials.loc[0, "param:lr"] == 1e-3
    for t in r.trials.index:
        cfg = config_from_params(r._params(t))
        assert (cfg.epochs, cfg.lr) == (r.trials.loc[t, "param:epochs"], r.trials.loc[t, "param:lr"])
        assert r.trials.loc[t, "accuracy"] == demo.evaluate(r.build(t))  # rebuilt with its own epochs, not 5
    t = r.trials.index[-1]
    cfg = config_from_params(r._params(t))
    by_hand = finetune(demo.load_model(), demo.train_loader(seed=0), F.cross_entropy, epochs=cfg.epochs, lr=cfg.lr,
                       progress=False) if cfg.amount == 0 else None
    if by_hand is not None:  # unpruned: the trial is exactly nbopt.finetune with its epochs and rate (then folded)
        assert demo.evaluate(by_hand) == r.trials.loc[t, "accuracy"]
    other, _ = build_config(model, demo.example_input(1), Config(amount=cfg.amount, recover="finetune",
                                                                  lr=cfg.lr), calib=None,
                            train_data=demo.train_loader(seed=0), recover_epochs=cfg.epochs)
    assert demo.evaluate(other) == r.trials.loc[t, "accuracy"]


@pytest.mark.parametrize("kwargs, match", [({"runtimes": ("tvm",)}, "runtimes"), ({"runtimes": ()}, "runtimes"),
                                           ({"epochs": (0,)}, "epochs"), ({"lrs": (0.0,)}, "lrs")])
def test_space_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        SearchSpace(**kwargs)
