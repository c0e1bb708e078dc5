"""Where a Dynamic R-CNN's accuracy differs from its baseline's (issue 18, point 3): the two
trained models of one seed, run on the same images, with their parts exchanged.

For every image both models' backbones run once; the proposals of each model's RPN are fed
to both box heads. From those head outputs:

- swap: COCO AP of the four (classifier, regressor) combinations on the same proposals:
  the classifier's scores of one model with the box regression of the other ("change one,
  keep the other"), each with torchvision's postprocessing (score 0.05, NMS 0.5, top 100);
- scores: on proposals whose best IoU with an object lies in a band (0.5-0.65, 0.65-0.8,
  0.8-1), the probability each classifier gives the object's class, and how often that
  probability is >= 0.5; the mid band is where a high training threshold taught the
  classifier to call a proposal background;
- refined IoU: the IoU with its object of each such proposal after the regressor's box
  (its own class's deltas), per band: what each regressor does to the same proposals;
- recall: the fraction of objects a model's own final detections (score >= 0.05, top 100
  per image) find at IoU 0.5 / 0.7 / 0.9 with the right class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from dynrcnn.study.stats import COLUMNS

BANDS: Tuple[Tuple[float, float], ...] = ((0.5, 0.65), (0.65, 0.8), (0.8, 1.01))
RECALL_IOUS: Tuple[float, ...] = (0.5, 0.7, 0.9)


def band_name(band: Tuple[float, float]) -> str:
    return f"{band[0]:.2f}-{min(band[1], 1.0):.2f}"


@dataclass
class _Sums:
    """Running sums of one (model, band) cell."""

    count: int = 0
    prob: float = 0.0
    confident: int = 0
    refined_iou: float = 0.0

    def add(self, prob: Tensor, refined_iou: Tensor) -> None:
        self.count += int(prob.numel())
        self.prob += float(prob.sum())
        self.confident += int((prob >= 0.5).sum())
        self.refined_iou += float(refined_iou.sum())


@dataclass
class Diagnosis:
    """What diagnose_pair measured; models are named by the `names` passed to it."""

    names: Tuple[str, str]
    images: int = 0
    objects: int = 0
    swap: Dict[str, Dict[str, float]] = field(default_factory=dict)  # "cls X / reg Y" -> AP
    bands: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    recall: Dict[str, Dict[str, float]] = field(default_factory=dict)
    proposals_per_image: Dict[str, Dict[str, float]] = field(default_factory=dict)


def _heads(model: nn.Module, features: Dict[str, Tensor], proposals: List[Tensor],
           sizes: List[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
    heads = model.roi_heads
    x = heads.box_head(heads.box_roi_pool(features, proposals, sizes))
    return heads.box_predictor(x)


def _refined(model: nn.Module, regression: Tensor, proposals: Tensor, labels: Tensor) -> Tensor:
    """Each proposal's box after the regressor's deltas of class `labels`."""
    decoded = model.roi_heads.box_coder.decode(regression, [proposals])  # [N, C, 4]
    return decoded[torch.arange(len(labels)), labels]


def pair_outputs(models: Sequence[nn.Module], names: Tuple[str, str], images: Any,
                 original: List[Tuple[int, int]]) -> Tuple[Dict[int, Any], Dict[str, Any]]:
    """One transformed image batch through both models with their parts exchanged.
    Returns ({rpn index: (proposals, [(logits, regression) of each model's head])},
    {"rpn A / cls B / reg C": detections in original coordinates}); the combination of one
    model's own three parts is exactly that model's inference."""
    features = [m.backbone(images.tensors) for m in models]
    outputs, detections = {}, {}
    for r, rpn_model in enumerate(models):
        proposals, _ = rpn_model.rpn(images, features[r])
        heads = [_heads(m, features[k], proposals, images.image_sizes)
                 for k, m in enumerate(models)]
        outputs[r] = (proposals, heads)
        for c in range(2):
            for g in range(2):
                boxes, scores, labels = models[c].roi_heads.postprocess_detections(
                    heads[c][0], heads[g][1], proposals, images.image_sizes)
                det = models[c].transform.postprocess(
                    [{"boxes": boxes[0], "scores": scores[0], "labels": labels[0]}],
                    images.image_sizes, original)[0]
                detections[f"rpn {names[r]} / cls {names[c]} / reg {names[g]}"] = det
    return outputs, detections


@torch.inference_mode()
def diagnose_pair(models: Sequence[nn.Module], names: Tuple[str, str], dataset: Any,
                  max_images: int = 0) -> Diagnosis:
    """Measure the pair (e.g. the baseline and DLA+DSL of one seed) on `dataset` (the
    evaluator's CocoDetection-like data set). Both models must share the input transform
    (same sizes and normalization) and the classes; they are put in eval mode."""
    from dynrcnn.engine.evaluator import coco_evaluate, detections_to_coco

    assert len(models) == 2 and len(names) == 2
    for m in models:
        m.eval()
    transform = models[0].transform
    results: Dict[str, List[Dict[str, Any]]] = {}
    sums = {(n, band): _Sums() for n in names for band in BANDS}
    found = {(n, t): 0 for n in names for t in RECALL_IOUS}
    props = {n: [0, 0] for n in names}  # proposals, of them with IoU >= 0.5
    diag = Diagnosis(names)
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    image_ids = []
    for index in range(count):
        image, target = dataset[index]
        image_id = int(target["image_id"])
        image_ids.append(image_id)
        original = [tuple(image.shape[-2:])]
        images, targets = transform([image], [{k: v.clone() for k, v in target.items()
                                              if k in ("boxes", "labels")}])
        gt, gt_labels = targets[0]["boxes"], targets[0]["labels"]
        diag.images += 1
        diag.objects += len(gt)
        outputs, detections = pair_outputs(models, names, images, original)
        for key, det in detections.items():
            results.setdefault(key, []).extend(
                detections_to_coco(det, image_id, dataset.label_to_cat_id))
        for name in names:  # a model's own pipeline: its recall
            _count_recall(found, name, detections[f"rpn {name} / cls {name} / reg {name}"],
                          target)
        # scores and refined IoU per band, on the first model's proposals (the same RoIs
        # for both heads)
        if len(gt):
            for r, (proposals, heads) in outputs.items():
                iou = box_iou(proposals[0], gt)
                best, which = iou.max(dim=1)
                props[names[r]][0] += len(best)
                props[names[r]][1] += int((best >= 0.5).sum())
                if r != 0:
                    continue
                labels = gt_labels[which]
                for k, name in enumerate(names):
                    logits, regression = heads[k]
                    prob = logits.softmax(-1)[torch.arange(len(labels)), labels]
                    refined = _refined(models[k], regression, proposals[0], labels)
                    refined_iou = box_iou(refined, gt)[torch.arange(len(labels)), which]
                    for band in BANDS:
                        sel = (best >= band[0]) & (best < band[1])
                        sums[(name, band)].add(prob[sel], refined_iou[sel])
        else:
            for r, (proposals, _) in outputs.items():
                props[names[r]][0] += len(proposals[0])
    for key, res in results.items():
        bbox = coco_evaluate(dataset.coco, res, "bbox", image_ids)
        diag.swap[key] = {k: 100.0 * v for k, v in bbox.items() if k in COLUMNS}
    for name in names:
        diag.bands[name] = {
            band_name(b): {"proposals": sums[(name, b)].count,
                           "mean_prob": _ratio(sums[(name, b)].prob, sums[(name, b)].count),
                           "frac_prob_ge_0.5": _ratio(sums[(name, b)].confident,
                                                      sums[(name, b)].count),
                           "mean_refined_iou": _ratio(sums[(name, b)].refined_iou,
                                                      sums[(name, b)].count)}
            for b in BANDS}
        diag.recall[name] = {f"recall@{t}": _ratio(found[(name, t)], diag.objects)
                             for t in RECALL_IOUS}
        diag.proposals_per_image[name] = {
            "proposals": props[name][0] / max(1, diag.images),
            "iou>=0.5": props[name][1] / max(1, diag.images)}
    return diag


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _count_recall(found: Dict[Tuple[str, float], int], name: str, det: Dict[str, Tensor],
                  target: Dict[str, Tensor]) -> None:
    gt, labels = target["boxes"], target["labels"]
    if not len(gt) or not len(det["boxes"]):
        return
    iou = box_iou(gt, det["boxes"])
    iou[labels[:, None] != det["labels"][None, :]] = 0.0  # the right class only
    best = iou.max(dim=1).values
    for t in RECALL_IOUS:
        found[(name, t)] += int((best >= t).sum())


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def diagnosis_report(diags: Sequence[Diagnosis], seeds: Sequence[int]) -> str:
    """Markdown over the seeds' diagnoses (one pair each, same names): the swap table with
    paired differences to the first model's own pipeline, scores and refined IoU per band,
    recall, proposals per image."""
    from dynrcnn.study.stats import diff_cell, paired_difference

    cols = COLUMNS
    a, b = diags[0].names
    lines = [f"Seeds {', '.join(map(str, seeds))}; {diags[0].images} images, "
             f"{diags[0].objects} objects per seed.", "",
             "### Exchanging the classifier and the regressor (same proposals)", "",
             f"Mean over seeds; below each row, its difference to `rpn {a} / cls {a} / reg "
             f"{a}` (paired by seed, 95% CI; * excludes 0).", "",
             "| rpn / classifier / regressor | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    ref = f"rpn {a} / cls {a} / reg {a}"
    for key in diags[0].swap:
        lines.append(f"| {key} | " + " | ".join(
            f"{_mean([d.swap[key][c] for d in diags]):.1f}" for c in cols) + " |")
        if key != ref:
            cells = []
            for c in cols:
                diff = paired_difference({s: d.swap[key][c] for s, d in zip(seeds, diags)},
                                         {s: d.swap[ref][c] for s, d in zip(seeds, diags)})
                cells.append(diff_cell(diff))
            lines.append("| (difference) | " + " | ".join(cells) + " |")
    lines += ["", f"### The classifiers and regressors on the same proposals (rpn {a})", "",
              "Per band of the proposal's best IoU with an object: proposals per image, the "
              "mean probability of the object's class, the fraction with probability >= 0.5, "
              "and the mean IoU after the regressor's box.", "",
              "| model | band | proposals / image | mean p(class) | p >= 0.5 | IoU after "
              "regression |", "|---|---|---:|---:|---:|---:|"]
    for name in (a, b):
        for band in diags[0].bands[name]:
            cell = [d.bands[name][band] for d in diags]
            lines.append(
                f"| {name} | {band} | "
                f"{_mean([c['proposals'] / d.images for c, d in zip(cell, diags)]):.1f} | "
                f"{_mean([c['mean_prob'] for c in cell]):.3f} | "
                f"{_mean([c['frac_prob_ge_0.5'] for c in cell]):.3f} | "
                f"{_mean([c['mean_refined_iou'] for c in cell]):.3f} |")
    lines += ["", "### Recall of each model's own detections (right class)", "",
              "| model | " + " | ".join(diags[0].recall[a]) + " | proposals / image | of them "
              "IoU >= 0.5 |", "|---|" + "---:|" * (len(diags[0].recall[a]) + 2)]
    for name in (a, b):
        lines.append(f"| {name} | " + " | ".join(
            f"{_mean([d.recall[name][k] for d in diags]):.3f}" for k in diags[0].recall[a])
            + f" | {_mean([d.proposals_per_image[name]['proposals'] for d in diags]):.0f}"
            + f" | {_mean([d.proposals_per_image[name]['iou>=0.5'] for d in diags]):.1f} |")
    return "\n".join(lines) + "\n"
