"""Loading detector weights: strictly (`weights`) or for fine-tuning (`init_weights`).

Two rules, one module, so that `build_detector`, the trainer and the CLI agree:

- `weights_mismatch` / `load_detector_weights` (the meaning of `--weights`): every tensor
  must fit by name and shape. Exempt are training state that is not a model weight:
  DynamicState buffers (T, beta, histories: a Faster R-CNN checkpoint loads into a Dynamic
  R-CNN and back) and BatchNorm's `num_batches_tracked` counters (torchvision's detectors
  use FrozenBatchNorm2d, which has none, for pretrained trunks and BatchNorm2d, which has
  them, otherwise: a stock `fasterrcnn_resnet50_fpn(weights=None)` file must load into a
  model built for fine-tuning and vice versa).
- `load_fitting_weights` / `init_from_file` (the meaning of `--init-weights`): fine-tuning
  from a detector trained on other classes, as detectron2 and mmdetection do it. Tensors
  whose name and shape fit are loaded; the class-dependent predictor layers whose class
  count differs are re-initialized (they keep the model's fresh initialization); a whole
  mask branch present on one side only is skipped or left fresh. Anything else that does
  not fit (another backbone or head layout) is an error naming the tensor. The returned
  `InitReport.summary()` is the one line that names what was not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import Tensor, nn

from dynrcnn.modeling.backbones import PathLike, read_state_dict

# Module names (last component) whose tensors depend on the number of classes.
_CLASS_DEPENDENT_MODULES = ("box_predictor", "mask_predictor", "box_predictors")
# Branches a checkpoint may lack or add as a whole (Faster <-> Mask R-CNN fine-tuning).
_OPTIONAL_BRANCHES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")


def is_training_state(key: str) -> bool:
    """True for buffers that are training state, not weights: DynamicState's T, beta and
    histories, and BatchNorm's num_batches_tracked."""
    return ".dynamic_state." in f".{key}" or key.endswith("num_batches_tracked")


def _shape(t: Tensor) -> List[int]:
    return list(t.shape)


def weights_mismatch(model: nn.Module, state: Mapping[str, Any]) -> Optional[str]:
    """Why `state` does not load strictly into `model`, or None when it does (training
    state exempt, see `is_training_state`; DynamicState drops a history of another length
    itself, with a warning). Any other missing, unexpected or reshaped tensor is one."""
    own = model.state_dict()
    reshaped = [k for k in state if k in own and not is_training_state(k)
                and _shape(own[k]) != _shape(state[k])]
    if reshaped:
        key = reshaped[0]
        return f"{key} is {_shape(state[key])} in the file, {_shape(own[key])} in the model"
    missing = [k for k in own if k not in state and not is_training_state(k)]
    unexpected = [k for k in state if k not in own and not is_training_state(k)]
    if missing or unexpected:
        return f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
    return None


def load_state_loosely(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """load_state_dict for a state that `weights_mismatch` accepted: training-state
    buffers the file lacks keep the model's values, those the model lacks are dropped."""
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_detector_weights(model: nn.Module, path: PathLike) -> None:
    """Load a local detector checkpoint strictly, except for training state (see
    `weights_mismatch`); RuntimeError naming the file and the first misfit otherwise.

    Args:
        model: the detector to load into.
        path: a local checkpoint (model_*.pth) or state_dict file.
    """
    state = read_state_dict(path)
    why = weights_mismatch(model, state)
    if why is not None:
        raise RuntimeError(f"weights file {str(path)!r} does not fit the model: {why}")
    load_state_loosely(model, state)


class InitWeightsError(ValueError):
    """A fine-tuning checkpoint does not fit the model beyond what fine-tuning allows."""


@dataclass
class InitReport:
    """What `load_fitting_weights` did.

    Attributes:
        loaded: the number of the model's tensors loaded from the file.
        total: the number of the model's tensors (training state aside).
        reinitialized: (name, shape in the file, shape in the model) of class-dependent
            tensors left at their fresh initialization.
        fresh: model tensors of a branch the file lacks.
        skipped: file tensors of a branch the model lacks.
    """

    loaded: int
    total: int
    reinitialized: List[Tuple[str, List[int], List[int]]] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)

    def summary(self, source: str = "the file") -> str:
        """One line naming every tensor that was not loaded (fresh/skipped branches by
        their prefix and count); `source` names the file in it."""
        text = f"init-weights {source}: loaded {self.loaded} of {self.total} tensors"
        if self.reinitialized:
            names = ", ".join(f"{k} {a}->{b}" for k, a, b in self.reinitialized)
            text += f"; re-initialized (class count differs): {names}"
        for what, keys in (("left fresh (not in the file)", self.fresh),
                           ("skipped (not in the model)", self.skipped)):
            if keys:
                text += f"; {what}: {_branch_counts(keys)}"
        return text


def _branch_counts(keys: List[str]) -> str:
    counts: Dict[str, int] = {}
    for key in keys:
        branch = next((b for b in _OPTIONAL_BRANCHES if key.startswith(b)), key)
        counts[branch] = counts.get(branch, 0) + 1
    return ", ".join(f"{b}* ({n} tensors)" for b, n in counts.items())


def _class_dependent_prefixes(model: nn.Module) -> Tuple[str, ...]:
    return tuple(f"{name}." for name, _ in model.named_modules()
                 if name.split(".")[-1] in _CLASS_DEPENDENT_MODULES
                 or (len(name.split(".")) > 1
                     and name.split(".")[-2] in _CLASS_DEPENDENT_MODULES))


def _is_class_reshape(key: str, theirs: Tensor, ours: Tensor,
                      prefixes: Tuple[str, ...]) -> bool:
    """A predictor layer whose only difference is its output count (dim 0)."""
    return key.startswith(prefixes) and theirs.dim() == ours.dim() and \
        _shape(theirs)[1:] == _shape(ours)[1:]


def _in_optional_branch(key: str) -> bool:
    return key.startswith(_OPTIONAL_BRANCHES)


def load_fitting_weights(model: nn.Module, state: Mapping[str, Tensor]) -> InitReport:
    """Fine-tuning load (see the module docstring); raises InitWeightsError naming the
    first tensor that does not fit otherwise. Nothing is loaded when it raises.

    Args:
        model: the detector to load into.
        state: a state_dict (a detector's, e.g. torchvision's).

    Returns:
        The InitReport of what was loaded, re-initialized, left fresh or skipped.
    """
    own = model.state_dict()
    prefixes = _class_dependent_prefixes(model)
    report = InitReport(loaded=0, total=sum(1 for k in own if not is_training_state(k)))
    to_load: Dict[str, Tensor] = {}
    for key, tensor in state.items():
        if is_training_state(key):
            if key in own and _shape(own[key]) == _shape(tensor) \
                    and key.endswith("num_batches_tracked"):
                to_load[key] = tensor
            continue
        if key not in own:
            if not _in_optional_branch(key):
                raise InitWeightsError(
                    f"{key} {_shape(tensor)} is in the file but not in the model")
            report.skipped.append(key)
        elif _shape(own[key]) == _shape(tensor):
            to_load[key] = tensor
            report.loaded += 1
        elif _is_class_reshape(key, tensor, own[key], prefixes):
            report.reinitialized.append((key, _shape(tensor), _shape(own[key])))
        else:
            raise InitWeightsError(f"{key} is {_shape(tensor)} in the file, "
                                   f"{_shape(own[key])} in the model")
    for key in own:
        if key in state or is_training_state(key):
            continue
        if not _in_optional_branch(key):
            raise InitWeightsError(f"{key} {_shape(own[key])} is in the model but not in "
                                   "the file")
        report.fresh.append(key)
    model.load_state_dict(to_load, strict=False)
    return report


def init_from_file(model: nn.Module, path: PathLike) -> InitReport:
    """`load_fitting_weights` from a local checkpoint or state_dict file; errors name it.

    Args:
        model: the detector to load into.
        path: a local checkpoint (model_*.pth) or state_dict file.
    """
    state = read_state_dict(path)
    try:
        return load_fitting_weights(model, state)
    except InitWeightsError as exc:
        raise InitWeightsError(f"init-weights file {str(path)!r} does not fit the model: "
                               f"{exc}") from None
