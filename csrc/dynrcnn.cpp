// The one place where dynrcnn's operator schemas are declared. Kernels live in
// ops/cpu/*.cpp (CPU dispatch key) and ops/cuda/*.cu (CUDA dispatch key); fake (meta)
// kernels and autograd are registered from Python in dynrcnn/ops/.
#include <torch/library.h>

TORCH_LIBRARY(dynrcnn, m) {
  // Pairwise IoU of x1,y1,x2,y2 boxes. Boxes with non-positive width or height (or NaN
  // coordinates) have IoU 0 with everything. Output dtype = input dtype.
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");

  // Fused matching and Dynamic R-CNN statistics for a batch of images; see DESIGN.md
  // "Op contracts" and dynrcnn/ops/_reference.py for the exact semantics.
  //   matched_idxs int64[N]: row of gt_boxes (global index) or -1 for an image with no gt
  //   max_iou      float32[N]; labels int64[N] (1 if max_iou >= iou_thr and the image has gt)
  //   kth_iou, kth_err float32[] (per_image=False) or float32[B] (per_image=True)
  m.def(
      "dynamic_match(Tensor proposals, Tensor gt_boxes, Tensor proposal_splits, "
      "Tensor gt_splits, Tensor iou_thr, int k_iou, int k_err, float[] weights, "
      "bool per_image) -> (Tensor matched_idxs, Tensor max_iou, Tensor labels, "
      "Tensor kth_iou, Tensor kth_err)");

  // Dynamic SmoothL1 with beta as a 0-dim tensor on the op's device.
  // reduction: 0 = none, 1 = mean, 2 = sum (at::Reduction values).
  m.def(
      "dynamic_smooth_l1(Tensor input, Tensor target, Tensor beta, Tensor? weight, "
      "int reduction) -> Tensor");
  // Forward and backward fused for a reduced loss (reduction 1 or 2): the loss and its
  // gradient with respect to input for grad_output = 1, from one pass over the inputs.
  m.def(
      "dynamic_smooth_l1_with_grad(Tensor input, Tensor target, Tensor beta, Tensor? weight, "
      "int reduction) -> (Tensor loss, Tensor grad)");
  m.def(
      "dynamic_smooth_l1_backward(Tensor grad_output, Tensor input, Tensor target, "
      "Tensor beta, Tensor? weight, int reduction) -> Tensor");

  // torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep] (max_keep -1:
  // all): the same kept indices in the same order, bit for bit; the RPN's proposal filter.
  m.def(
      "batched_nms_topk(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, "
      "int max_keep) -> Tensor");

  // torchvision.ops.roi_align with torchvision's results bit for bit (forward and gradient);
  // rois [K, 5] = (image index, x1, y1, x2, y2). Gradients flow to input only.
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, "
      "int sampling_ratio, bool aligned) -> Tensor");
}
