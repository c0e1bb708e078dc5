"""Backbones with FPN for the detectors: ResNet-18/50/101 (the paper uses R-50), torchvision's
R-50-FPN v2 and MobileNetV3-Large FPN layouts, and a tiny CNN.

Every backbone is a torchvision `BackboneWithFPN`. The ResNets and the tiny CNN output '0',
'1', '2', '3', 'pool' (strides 4 to 64), so torchvision's default anchor generator and
MultiScaleRoIAlign fit them; mobilenet_v3_large_fpn outputs '0', '1', 'pool' (strides 16,
32, 64) as in torchvision. A spec's `layout` gives the detector modules torchvision builds
around a backbone (resnet50_fpn_v2, mobilenet_v3_large_fpn: see layouts.py), and
`torchvision` the stock constructors with exactly this layout (for import and export).

Weights are never downloaded. `weights` is the path of a LOCAL file (torch.load with
weights_only=True) holding either a classification checkpoint of the trunk (torchvision's
ImageNet ResNet files: conv1.*, layer1.*, ..., fc.*) or a backbone checkpoint (body.*, fpn.*).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet, resnet
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.ops import misc as misc_nn_ops

from dynrcnn.modeling.layouts import mobilenet_v3_large_fpn_modules, resnet50_fpn_v2_modules

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone, and head sizes that suit it.

    representation_size: width of the box head's two FC layers (torchvision's 1024 for the
        ResNets; smaller for the tiny backbone, whose FPN has few channels, so that a CPU
        train step stays fast).
    mask_layers, mask_dim_reduced: channels of the mask head's convs and of its deconv
        (torchvision's (256,)*4 and 256 for the ResNets).
    """

    name: str
    build: Callable[[Optional[PathLike], Optional[int], bool], BackboneWithFPN]
    representation_size: int = 1024
    mask_layers: Tuple[int, ...] = (256, 256, 256, 256)
    mask_dim_reduced: int = 256
    layout: Optional[Callable[..., Dict[str, Any]]] = None
    torchvision: Tuple[Optional[str], Optional[str]] = (None, None)


def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """A state_dict from a local file; unwraps {'model': ...} / {'state_dict': ...} checkpoints."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights file {str(path)!r} does not exist (nothing is downloaded)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state_dict (a mapping of name -> tensor)")
    return dict(obj)


def _is_backbone_checkpoint(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("body.", "fpn.")) for k in state)


def _load_backbone_file(trunk: nn.Module, path: PathLike) -> Optional[Dict[str, Tensor]]:
    """Load a classification checkpoint into `trunk` now; return a backbone checkpoint (body.*,
    fpn.*) for the caller to load after the FPN exists, else None."""
    state = read_state_dict(path)
    if _is_backbone_checkpoint(state):
        return state
    trunk.load_state_dict(state)
    return None


def _trainable_layers(is_trained: bool, requested: Optional[int], stages: int = 5) -> int:
    """torchvision's rule: train everything from scratch; from pretrained weights train the
    last 3 of the trunk's `stages` (ResNets 5, MobileNetV3 6) by default."""
    if not is_trained:
        if requested not in (None, stages):
            warnings.warn(
                f"trainable_backbone_layers={requested} has no effect without weights: a "
                "randomly initialised backbone is trained entirely", stacklevel=4)
        return stages
    value = 3 if requested is None else requested
    if not 0 <= value <= stages:
        raise ValueError(f"trainable_backbone_layers must be in [0, {stages}], got {value}")
    return value


def _resnet_fpn(depth: str, fpn_norm: Optional[Callable[..., nn.Module]] = None
                ) -> Callable[[Optional[PathLike], Optional[int], bool], BackboneWithFPN]:
    def build(weights: Optional[PathLike], trainable_layers: Optional[int],
              is_trained: bool) -> BackboneWithFPN:
        # As torchvision's fasterrcnn_resnet50_fpn: frozen BN for pretrained trunks, plain BN
        # (trained) from scratch. torchvision's v2 keeps plain BN in a pretrained trunk too;
        # here any pretrained trunk freezes its BN (small fine-tuning batches), which
        # changes no parameter name: v2 checkpoints load either way.
        norm = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
        trunk = resnet.__dict__[depth](weights=None, norm_layer=norm)
        late = _load_backbone_file(trunk, weights) if weights is not None else None
        backbone = _resnet_fpn_extractor(trunk, _trainable_layers(is_trained, trainable_layers),
                                         norm_layer=fpn_norm)
        if late is not None:
            backbone.load_state_dict(late)
        return backbone

    return build


def _mobilenet_v3_large_fpn(weights: Optional[PathLike], trainable_layers: Optional[int],
                            is_trained: bool) -> BackboneWithFPN:
    """torchvision's fasterrcnn_mobilenet_v3_large_fpn backbone: the last two stages of
    MobileNetV3-Large into an FPN (outputs '0', '1', 'pool'); a classification checkpoint
    (features.*, classifier.*) loads into the trunk."""
    norm = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    trunk = mobilenet.mobilenet_v3_large(weights=None, norm_layer=norm)
    late = _load_backbone_file(trunk, weights) if weights is not None else None
    backbone = _mobilenet_extractor(trunk, True,
                                    _trainable_layers(is_trained, trainable_layers, stages=6))
    if late is not None:
        backbone.load_state_dict(late)
    return backbone


class TinyTrunk(nn.Sequential):
    """Five strided 3x3 conv blocks (strides 2, 4, 8, 16, 32), 16 to 128 channels.

    Not a paper backbone: it exists so that the whole pipeline (RPN, RoI heads, masks)
    trains and runs in well under a second per 320-px image on a laptop CPU, for demos and
    tests. Its FPN has 32 channels (the RoI features, hence RoIAlign's cost, scale with it).
    The children are named like a ResNet's so `BackboneWithFPN` can pick them.
    """

    channels: Tuple[int, int, int, int] = (32, 64, 96, 128)
    fpn_channels: int = 32

    def __init__(self) -> None:
        def block(cin: int, cout: int, stride: int) -> nn.Module:
            return misc_nn_ops.Conv2dNormActivation(cin, cout, 3, stride,
                                                    norm_layer=nn.BatchNorm2d)

        c1, c2, c3, c4 = self.channels
        super().__init__(OrderedDict([
            ("stem", block(3, 16, 2)),
            ("layer1", nn.Sequential(block(16, c1, 2), block(c1, c1, 1))),
            ("layer2", nn.Sequential(block(c1, c2, 2), block(c2, c2, 1))),
            ("layer3", block(c2, c3, 2)),
            ("layer4", block(c3, c4, 2)),
        ]))


def _tiny_fpn(weights: Optional[PathLike], trainable_layers: Optional[int],
              is_trained: bool) -> BackboneWithFPN:
    """The tiny trunk always trains entirely with plain BatchNorm (it has no pretrained
    weights to protect), whatever `is_trained` says."""
    if trainable_layers not in (None, 5):
        raise ValueError("tiny_fpn is always trained entirely: drop trainable_backbone_layers")
    trunk = TinyTrunk()
    late = _load_backbone_file(trunk, weights) if weights is not None else None
    backbone = BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=list(TinyTrunk.channels),
        out_channels=TinyTrunk.fpn_channels,
    )
    if late is not None:
        backbone.load_state_dict(late)
    return backbone


BACKBONE_SPECS: Dict[str, BackboneSpec] = {
    "resnet50_fpn": BackboneSpec(
        "resnet50_fpn", _resnet_fpn("resnet50"),
        torchvision=("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn")),
    "resnet50_fpn_v2": BackboneSpec(
        "resnet50_fpn_v2", _resnet_fpn("resnet50", fpn_norm=nn.BatchNorm2d),
        layout=resnet50_fpn_v2_modules,
        torchvision=("fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2")),
    "mobilenet_v3_large_fpn": BackboneSpec(
        "mobilenet_v3_large_fpn", _mobilenet_v3_large_fpn,
        layout=mobilenet_v3_large_fpn_modules,
        torchvision=("fasterrcnn_mobilenet_v3_large_fpn", None)),
    "resnet101_fpn": BackboneSpec("resnet101_fpn", _resnet_fpn("resnet101")),
    "resnet18_fpn": BackboneSpec("resnet18_fpn", _resnet_fpn("resnet18")),
    "tiny_fpn": BackboneSpec("tiny_fpn", _tiny_fpn, representation_size=256,
                             mask_layers=(32, 32), mask_dim_reduced=32),
}
BACKBONES: Tuple[str, ...] = tuple(BACKBONE_SPECS)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone by name, with an error listing the known names."""
    if name not in BACKBONE_SPECS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONE_SPECS[name]


def build_backbone(name: str, weights: Optional[PathLike] = None,
                   trainable_layers: Optional[int] = None,
                   pretrained: Optional[bool] = None) -> BackboneWithFPN:
    """Build backbone `name`, optionally from a local weights file.

    Args:
        name: one of BACKBONES.
        weights: a local file with the trunk's classification weights (e.g. torchvision's
            ImageNet ResNet) or a backbone state_dict; None: none are loaded.
        trainable_layers: how many of a pretrained ResNet's last stages train (default 3).
        pretrained: build for fine-tuning: ResNets then use FrozenBatchNorm2d and train
            their last `trainable_layers` stages, as torchvision's detection builders do;
            otherwise every layer trains with plain BatchNorm. Default: whether `weights`
            is given (a builder loading a whole detector checkpoint sets it too).
    """
    is_trained = weights is not None if pretrained is None else bool(pretrained)
    return backbone_spec(name).build(weights, trainable_layers, is_trained)
