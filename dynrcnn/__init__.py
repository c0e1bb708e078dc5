"""dynrcnn: Dynamic R-CNN with fused C++/CUDA kernels.

`import dynrcnn` needs only torch; the detectors and data code import torchvision and
pycocotools when they are used.
"""

from dynrcnn import ops
from dynrcnn.ops import MatchResult, box_iou, dynamic_match, dynamic_smooth_l1

__version__ = "0.1.0"
__all__ = ["ops", "box_iou", "dynamic_match", "dynamic_smooth_l1", "MatchResult", "__version__"]
