"""Fake COCO data and configs shared by the trainer tests (test_trainer, test_resume,
test_sampling, test_train_config, test_torchrun) and test_checkpoint.py.

The fake dataset (FakeCocoDetection, write_fake_coco) implements dynrcnn.data's
CocoDetection interface on a tiny COCO json written with json.dump, so the engine tests do
not depend on the data module; the torchrun and SIGKILL scripts import it from here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Dict, Tuple

import torch
from pycocotools.coco import COCO
from torch import Tensor, nn

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.engine import TrainConfig, Trainer
from dynrcnn.engine.checkpoint import atomic_write_text

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WIDTH, HEIGHT = 128, 96
# Non-contiguous COCO category ids: label k maps to CATEGORIES[k-1]["id"].
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "wide"}, {"id": 9, "name": "tall"}]
# Small RPN / sampler settings keep a step near 0.1 s; everything else is torchvision's.
SMALL_MODEL = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                   rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=100,
                   box_batch_size_per_image=64)


# --------------------------------------------------------------------------- fake data


def write_fake_coco(path: str, num_images: int, seed: int, first_id: int = 100) -> str:
    """A COCO instances json: num_images images of WIDTH x HEIGHT with 1-3 boxes each."""
    gen = torch.Generator().manual_seed(seed)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": WIDTH,
                       "height": HEIGHT})
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            w, h = (12 + torch.rand(2, generator=gen) * 40).tolist()
            x = float(torch.rand((), generator=gen)) * (WIDTH - w)
            y = float(torch.rand((), generator=gen)) * (HEIGHT - h)
            cat = CATEGORIES[int(torch.randint(0, len(CATEGORIES), (), generator=gen))]["id"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # atomic: under torchrun every rank writes the same file, and a rank reading while
    # another truncates it would see an empty file (a flaky test_torchrun)
    atomic_write_text(json.dumps({"images": images, "annotations": annotations,
                                  "categories": CATEGORIES}), path)
    return path


class FakeCocoDetection:
    """dynrcnn.data.CocoDetection's interface; images are drawn from the annotations
    (noise plus one flat intensity per class inside each box), so nothing is read from disk
    but the json."""

    def __init__(self, images_dir: str, annotation_file: str, train: bool,
                 transforms: Any = None, masks: bool = False) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(annotation_file)
        self.ids = sorted(self.coco.getImgIds())
        cat_ids = sorted(self.coco.getCatIds())
        self.label_to_cat_id = {k + 1: c for k, c in enumerate(cat_ids)}
        self.cat_id_to_label = {c: k for k, c in self.label_to_cat_id.items()}
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in cat_ids]
        self.num_classes = len(cat_ids) + 1
        self.masks = masks
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        anns = self.coco.imgToAnns[image_id]
        gen = torch.Generator().manual_seed(image_id)
        image = 0.2 * torch.rand(3, h, w, generator=gen)
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns],
                              dtype=torch.int64)
        masks = torch.zeros(len(anns), h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            image[int(labels[k]) - 1, y1:y2, x1:x2] = 0.9
            masks[k, y1:y2, x1:x2] = 1
        target: Dict[str, Any] = {"boxes": boxes, "labels": labels, "image_id": image_id}
        if self.masks:
            target["masks"] = masks
        return image, target


def fake_datasets(root: str, masks: bool = False, num_train: int = 8,
                  num_val: int = 5) -> Tuple[FakeCocoDetection, FakeCocoDetection]:
    train_ann = write_fake_coco(os.path.join(root, "train.json"), num_train, seed=1)
    val_ann = write_fake_coco(os.path.join(root, "val.json"), num_val, seed=2, first_id=500)
    return (FakeCocoDetection(root, train_ann, train=True, masks=masks),
            FakeCocoDetection(root, val_ann, train=False, masks=masks))


def small_config(out_dir: str, **overrides: Any) -> TrainConfig:
    """6 iterations of Dynamic R-CNN on tiny_fpn; T and beta update every 2 iterations
    (k = 1 per image, so they move away from 0.4 / 1.0 on this data)."""
    base = dict(arch="dynamic_rcnn", backbone="tiny_fpn", out_dir=out_dir, iterations=6,
                batch_size=2, lr=0.01, scale_lr=False, warmup_iters=2, checkpoint_period=3,
                log_period=1, num_workers=0, progress=False, plot=False, device="cpu",
                min_size=HEIGHT, max_size=WIDTH, model_kwargs=dict(SMALL_MODEL),
                dynamic=DynamicConfig(k_iou=1, k_err=1, interval=2), seed=0)
    base.update(overrides)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- comparisons


def final_state(trainer: Trainer) -> Dict[str, Any]:
    state = trainer.dynamic_state
    assert state is not None
    return {"iteration": trainer.iteration, "iou_thr": state.iou_thr.item(),
            "beta": state.beta.item(), "records": state.records,
            "lr": trainer.optimizer.param_groups[0]["lr"]}


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-6, atol=1e-7, equal_nan=True,
                                   msg=lambda m, k=key: f"{k}: {m}")
