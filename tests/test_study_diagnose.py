"""Issue 18, point 3: the diagnosis exchanges a pair's classifier and regressor on the same
proposals (dynrcnn.study.diagnose). A model's own three parts must reproduce its inference
exactly, and an exchanged part must act as if that part were in the model."""

from __future__ import annotations

import copy

import pytest
import torch

from dynrcnn.data import make_synthetic_coco
from dynrcnn.engine import EvalConfig
from dynrcnn.engine.builders import build_val_dataset
from dynrcnn.engine.evaluator import evaluate
from dynrcnn.modeling import build_detector
from dynrcnn.study.diagnose import diagnose_pair, diagnosis_report, pair_outputs

NAMES = ("a", "b")


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=4, min_size=64,
                           max_size=64, box_score_thresh=0.0, rpn_post_nms_top_n_test=50,
                           rpn_pre_nms_top_n_test=50)
    return model.eval()


def run_pair(models, image):
    images, _ = models[0].transform([image])
    return pair_outputs(models, NAMES, images, [tuple(image.shape[-2:])])[1]


def same(det, ref) -> None:
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(det[k], ref[k], rtol=0, atol=0)


@torch.inference_mode()
def test_own_parts_reproduce_each_models_inference() -> None:
    models = [tiny(0), tiny(1)]
    image = torch.rand(3, 64, 64)
    dets = run_pair(models, image)
    assert len(dets) == 8
    for name, model in zip(NAMES, models):
        ref = model([image])[0]
        assert len(ref["boxes"]) > 0
        same(dets[f"rpn {name} / cls {name} / reg {name}"], ref)


@torch.inference_mode()
def test_an_exchanged_regressor_acts_as_if_it_were_in_the_model() -> None:
    a = tiny(0)
    b = copy.deepcopy(a)  # the same model but for the box regression layer
    torch.manual_seed(5)
    torch.nn.init.normal_(b.roi_heads.box_predictor.bbox_pred.weight, std=0.05)
    hybrid = copy.deepcopy(a)
    hybrid.roi_heads.box_predictor.bbox_pred = copy.deepcopy(b.roi_heads.box_predictor.bbox_pred)
    image = torch.rand(3, 64, 64)
    dets = run_pair([a, b], image)
    same(dets["rpn a / cls a / reg b"], hybrid([image])[0])
    assert not torch.equal(dets["rpn a / cls a / reg a"]["boxes"],
                           dets["rpn a / cls a / reg b"]["boxes"])


def test_diagnosis_own_pipeline_ap_is_the_evaluators(tmp_path) -> None:
    out = make_synthetic_coco(tmp_path, num_train=0, num_val=4, image_size=(64, 64),
                              num_classes=3, masks=False)
    dataset = build_val_dataset(EvalConfig(val_images=str(out.val_images),
                                           val_ann=str(out.val_annotations)))
    models = [tiny(0), tiny(1)]
    diag = diagnose_pair(models, NAMES, dataset)
    for name, model in zip(NAMES, models):
        bbox = evaluate(model, dataset, progress=False)["bbox"]
        assert diag.swap[f"rpn {name} / cls {name} / reg {name}"]["AP50"] == pytest.approx(
            100 * bbox["AP50"], abs=1e-9)
    assert diag.images == 4 and diag.objects > 0
    report = diagnosis_report([diag, diag], [0, 1])
    assert "| rpn a / cls b / reg a |" in report and "recall@0.5" in report
