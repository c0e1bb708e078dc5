"""The COCO evaluator against pycocotools' own COCOeval and an independent AP computation."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("pycocotools")

from pycocotools import mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from dynrcnn.engine import (  # noqa: E402
    METRIC_NAMES,
    coco_evaluate,
    detections_to_coco,
    evaluate,
    format_metrics_table,
)

W, H = 160, 120
CATS = [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}]
LABEL_TO_CAT = {1: 2, 2: 5}
# (image_id, category_id, x, y, w, h): small (< 32^2), medium and large objects
GT_BOXES = [
    (11, 2, 10, 10, 20, 20), (11, 5, 60, 30, 50, 40), (11, 2, 5, 60, 110, 55),
    (12, 2, 30, 20, 25, 15), (12, 5, 90, 60, 40, 50), (12, 5, 8, 8, 12, 10),
    (13, 2, 40, 40, 60, 60), (13, 5, 100, 10, 30, 30), (13, 5, 10, 5, 130, 110),
]


def write_gt(path: str) -> COCO:
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (11, 12, 13)]
    anns = [{"id": n + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h],
             "area": float(w * h), "iscrowd": 0,
             "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
            for n, (img, cat, x, y, w, h) in enumerate(GT_BOXES)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": CATS}, f)
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def fake_detections(seed: int = 0) -> List[Dict[str, Any]]:
    """Jittered copies of the ground truth (IoUs spread over 0.4..1), a few wrong-class
    and background boxes; distinct scores so the ranking is unambiguous."""
    rng = np.random.default_rng(seed)
    dets = []
    for img, cat, x, y, w, h in GT_BOXES:
        for _ in range(2):
            s = rng.uniform(-1, 1, 4) * rng.choice([0.02, 0.05, 0.12, 0.25])
            dets.append({"image_id": img, "category_id": cat,
                         "bbox": [x + s[0] * w, y + s[1] * h, w * (1 + s[2]), h * (1 + s[3])]})
    for img in (11, 12, 13):
        x, y = rng.uniform(0, 100, 2)
        dets.append({"image_id": img, "category_id": int(rng.choice([2, 5])),
                     "bbox": [x, y, 20.0, 15.0]})
    scores = rng.permutation(len(dets)) / len(dets) + 0.01
    for d, s in zip(dets, scores):
        d["score"] = float(s)
    return dets


def pycocotools_stats(coco_gt: COCO, dets: List[Dict[str, Any]], iou_type: str = "bbox"):
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def xywh_iou(a: List[float], b: List[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def independent_ap(dets: List[Dict[str, Any]], thr: float) -> float:
    """COCO's AP at one IoU threshold (area all, no crowd, < 100 detections per image),
    written from the definition: greedy matching by score to the best free ground truth
    with IoU >= thr, monotone precision envelope, 101 recall points, mean over classes."""
    recall_points = np.linspace(0, 1, 101)
    per_class = []
    for cat in sorted({c for _, c, *_ in GT_BOXES}):
        gts = [(img, list(box)) for img, c, *box in GT_BOXES if c == cat]
        cdets = sorted((d for d in dets if d["category_id"] == cat), key=lambda d: -d["score"])
        taken = set()
        tp = []
        for d in cdets:
            best, best_iou = None, min(thr, 1 - 1e-10)
            for g, (img, box) in enumerate(gts):
                if img != d["image_id"] or g in taken:
                    continue
                iou = xywh_iou(d["bbox"], box)
                if iou >= best_iou:
                    best, best_iou = g, iou
            if best is not None:
                taken.add(best)
            tp.append(best is not None)
        tps = np.cumsum(tp)
        fps = np.cumsum([not t for t in tp])
        recall = tps / len(gts)
        precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, recall_points, side="left")
        q = [envelope[i] if i < len(envelope) else 0.0 for i in idx]
        per_class.append(np.mean(q))
    return float(np.mean(per_class))


def test_coco_evaluate_equals_pycocotools_stats_and_independent_ap(tmp_path):
    coco_gt = write_gt(str(tmp_path / "gt.json"))
    dets = fake_detections()
    metrics = coco_evaluate(coco_gt, dets, "bbox")
    stats = pycocotools_stats(coco_gt, dets)
    assert list(metrics) == list(METRIC_NAMES)
    assert metrics["AP"] == stats[0] and metrics["AP50"] == stats[1]
    assert metrics["AP75"] == stats[2]
    assert (metrics["APS"], metrics["APM"], metrics["APL"]) == tuple(stats[3:6])
    for name, thr in (("AP50", 0.5), ("AP60", 0.6), ("AP70", 0.7), ("AP75", 0.75),
                      ("AP80", 0.8), ("AP90", 0.9)):
        assert metrics[name] == pytest.approx(independent_ap(dets, thr), abs=1e-12), name
    # the numbers are informative: not all equal, decreasing with the threshold
    assert 0 < metrics["AP90"] < metrics["AP70"] < metrics["AP50"] <= 1
    assert dets == fake_detections()  # the caller's results are not modified


def test_no_detections_gives_zeros_and_a_warning(tmp_path):
    coco_gt = write_gt(str(tmp_path / "gt.json"))
    with pytest.warns(RuntimeWarning, match="no detections"):
        metrics = coco_evaluate(coco_gt, [], "bbox")
    assert set(metrics) == set(METRIC_NAMES)
    assert all(v == 0.0 for v in metrics.values())  # every area range has ground truth here
    with pytest.warns(RuntimeWarning):
        assert coco_evaluate(coco_gt, [], "segm")["AP"] == 0.0


# --------------------------------------------------------------------------- evaluate()


class IdDataset:
    """CocoDetection's interface over the gt file; pixel [0, 0, 0] encodes the image id so
    the fake detector below knows which image it sees."""

    def __init__(self, ann_file: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(ann_file)
        self.ids = sorted(self.coco.getImgIds())
        self.label_to_cat_id = dict(LABEL_TO_CAT)
        self.num_classes = 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tuple[Tensor, Dict[str, Any]]:
        image = torch.zeros(3, H, W)
        image[0, 0, 0] = self.ids[i] / 1000
        return image, {"image_id": self.ids[i], "boxes": torch.zeros(0, 4),
                       "labels": torch.zeros(0, dtype=torch.int64)}


def box_mask(boxes: Tensor) -> Tensor:
    """Mask probabilities [N, 1, H, W]: 0.9 inside each xyxy box, 0.2 outside."""
    masks = torch.full((boxes.shape[0], 1, H, W), 0.2)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[k, 0, max(y1, 0):y2, max(x1, 0):x2] = 0.9
    return masks


class FakeDetector(nn.Module):
    """Returns fixed detections (torchvision's output format) per image id."""

    def __init__(self, dets: List[Dict[str, Any]], masks: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        cat_to_label = {c: k for k, c in LABEL_TO_CAT.items()}
        self.outputs: Dict[int, Dict[str, Tensor]] = {}
        for img in (11, 12, 13):
            mine = [d for d in dets if d["image_id"] == img]
            xywh = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
            out = {"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                   "scores": torch.tensor([d["score"] for d in mine]),
                   "labels": torch.tensor([cat_to_label[d["category_id"]] for d in mine],
                                          dtype=torch.int64)}
            if masks:
                out["masks"] = box_mask(out["boxes"])
            self.outputs[img] = out

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        assert not self.training, "evaluate() must put the model in eval mode"
        return [self.outputs[int(round(float(img[0, 0, 0]) * 1000))] for img in images]


def test_evaluate_bbox_and_segm_writes_json_and_markdown(tmp_path):
    ann = str(tmp_path / "gt.json")
    coco_gt = write_gt(ann)
    dets = fake_detections(seed=1)
    model = FakeDetector(dets, masks=True).train()
    out = str(tmp_path / "eval")
    metrics = evaluate(model, IdDataset(ann), torch.device("cpu"), batch_size=2,
                       out_dir=out, iou_types=("bbox", "segm"), progress=False,
                       save_results=True)
    assert model.training  # mode restored

    stats = pycocotools_stats(coco_gt, dets)
    assert metrics["bbox"]["AP"] == pytest.approx(stats[0], abs=1e-6)
    assert metrics["bbox"]["AP75"] == pytest.approx(stats[2], abs=1e-6)
    # segm: the same masks binarized at 0.5 and RLE-encoded by hand
    segm = []
    for d in dets:
        x, y, w, h = d["bbox"]
        m = box_mask(torch.tensor([[x, y, x + w, y + h]]))[0, 0] > 0.5
        rle = mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        segm.append({"image_id": d["image_id"], "category_id": d["category_id"],
                     "segmentation": rle, "score": d["score"]})
    segm_stats = pycocotools_stats(coco_gt, segm, "segm")
    assert [metrics["segm"][k] for k in ("AP", "AP50", "AP75", "APS", "APM", "APL")] == \
        pytest.approx(list(segm_stats[:6]), abs=1e-6)

    saved = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert saved.keys() == metrics.keys()
    for t in ("bbox", "segm"):
        assert saved[t] == pytest.approx(metrics[t])
    table = open(os.path.join(out, "metrics.md")).read()
    assert table.splitlines()[0] == "| | " + " | ".join(METRIC_NAMES) + " |"
    assert f"| bbox | {100 * metrics['bbox']['AP']:.1f} |" in table
    assert len(json.loads(open(os.path.join(out, "results_segm.json")).read())) == len(dets)


def test_evaluate_without_any_detection_does_not_crash(tmp_path):
    ann = str(tmp_path / "gt.json")
    write_gt(ann)
    with pytest.warns(RuntimeWarning, match="no detections"):
        metrics = evaluate(FakeDetector([]), IdDataset(ann), torch.device("cpu"),
                           out_dir=str(tmp_path / "eval"), progress=False)
    assert metrics["bbox"]["AP"] == 0.0 and metrics["bbox"]["AP90"] == 0.0
    assert (tmp_path / "eval" / "metrics.md").exists()


def test_detections_to_coco_maps_labels_and_boxes():
    out = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]), "scores": torch.tensor([0.7]),
           "labels": torch.tensor([2]), "masks": box_mask(torch.tensor([[10.0, 20, 40, 60]]))}
    (res,) = detections_to_coco(out, 42, LABEL_TO_CAT, masks=True)
    assert res["image_id"] == 42 and res["category_id"] == 5
    assert res["bbox"] == pytest.approx([10.0, 20.0, 30.0, 40.0])
    assert res["score"] == pytest.approx(0.7)
    assert mask_util.area(res["segmentation"]) == 30 * 40
    json.dumps(res)  # serializable as written
    with pytest.raises(KeyError, match="label 9"):
        detections_to_coco({**out, "labels": torch.tensor([9])}, 42, LABEL_TO_CAT)
    assert detections_to_coco({k: v[:0] for k, v in out.items()}, 1, LABEL_TO_CAT) == []


def test_format_metrics_table():
    flat = {name: 0.5 for name in METRIC_NAMES}
    flat["APL"] = -1.0
    table = format_metrics_table(flat)
    lines = table.splitlines()
    assert lines[1] == "|---|" + "---:|" * len(METRIC_NAMES)
    assert lines[2] == "|  | " + " | ".join(["50.0"] * 9 + ["-"]) + " |"
    runs = format_metrics_table({"faster": {"AP": 0.37, "AP90": 0.097},
                                 "dynamic": {"AP": 0.389, "AP90": 0.152}}, percent=True)
    assert "| faster | 37.0 | 9.7 |" in runs and "| dynamic | 38.9 | 15.2 |" in runs
    assert math.isclose(float(runs.splitlines()[3].split("|")[2]), 38.9)
