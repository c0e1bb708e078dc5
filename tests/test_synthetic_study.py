"""The synthetic data's recipes (issue 9, point 1): the default recipe is the demo's set,
unchanged; the "study" recipe is harder (more and smaller objects, heavier occlusion,
unannotated distractors, annotation jitter), deterministic for a seed, and its annotations
stay valid."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Dict

import numpy as np
import pytest
from PIL import Image

from dynrcnn.data import SyntheticConfig, make_synthetic_coco
from dynrcnn.data.recipes import RECIPES, STUDY_SPLITS, draw_distractors, recipe_config

# pixels + annotation files of make_synthetic_coco(num_train=4, num_val=2) before the recipes
# existed (commit e6a2a92): the demo, its tests and its committed results rely on them
DEFAULT_DIGEST = "131cdc058f7dffcc0fcd3073b8117661612a35c03a4b512f539c1c99b6925ea3"


def digest(root: str) -> str:
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(root, "*", "*.png"))):
        h.update(np.asarray(Image.open(f)).tobytes())
    for f in sorted(glob.glob(os.path.join(root, "annotations", "*.json"))):
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def annotations(root: str, split: str = "train") -> Dict[str, Any]:
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


def test_the_default_recipe_is_unchanged(tmp_path) -> None:
    make_synthetic_coco(tmp_path / "a", num_train=4, num_val=2)
    make_synthetic_coco(tmp_path / "b", num_train=4, num_val=2, recipe="default")
    assert digest(str(tmp_path / "a")) == DEFAULT_DIGEST
    assert digest(str(tmp_path / "b")) == DEFAULT_DIGEST


def test_study_is_deterministic_for_a_seed(tmp_path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_synthetic_coco(tmp_path / name, num_train=3, num_val=2, recipe="study", seed=seed,
                            masks=False)
    assert digest(str(tmp_path / "a")) == digest(str(tmp_path / "b"))
    assert digest(str(tmp_path / "a")) != digest(str(tmp_path / "c"))


def test_study_annotations_are_valid(tmp_path) -> None:
    make_synthetic_coco(tmp_path, num_train=24, num_val=6, recipe="study", masks=False)
    for split in ("train", "val"):
        data = annotations(str(tmp_path), split)
        assert data["info"]["config"]["box_jitter"] == RECIPES["study"]["box_jitter"]
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
            assert w >= 1 and h >= 1 and a["area"] > 0
        exact = [a["bbox"] == [round(v) for v in a["bbox"]] for a in data["annotations"]]
        assert all(exact) if split == "val" else not all(exact)  # jitter: train only


def test_jitter_moves_each_edge_by_at_most_its_amount_and_nothing_else(tmp_path) -> None:
    exact = recipe_config("study", box_jitter=0.0)
    assert exact.box_jitter == 0.0
    make_synthetic_coco(tmp_path / "j", num_train=6, num_val=0, recipe="study", masks=False)
    # the same recipe without jitter, through the config the generator builds
    from dynrcnn.data import synthetic

    root = tmp_path / "e"
    synthetic._write_split(exact, "train", 6, root / "train",
                           root / "annotations" / "instances_train.json", masks=False)
    for f in sorted(glob.glob(str(tmp_path / "j" / "train" / "*.png"))):
        twin = root / "train" / os.path.basename(f)
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(twin)))
    jittered = annotations(str(tmp_path / "j"))["annotations"]
    plain = annotations(str(root))["annotations"]
    assert len(jittered) == len(plain) > 0
    moved = 0.0
    for a, b in zip(jittered, plain):
        ax = np.array(a["bbox"][:2] + [a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]])
        bx = np.array(b["bbox"][:2] + [b["bbox"][0] + b["bbox"][2], b["bbox"][1] + b["bbox"][3]])
        assert np.abs(ax - bx).max() <= 1.5 + 1e-9
        assert b["bbox"] == [round(v) for v in b["bbox"]]  # without jitter: pixel-exact
        moved += np.abs(ax - bx).sum()
    assert moved > 0.5 * len(plain)  # mean |shift| of an edge is ~0.75 px


def test_distractors_paint_unannotated_shapes() -> None:
    cfg = recipe_config("study")
    img = np.zeros((256, 256, 3), dtype=np.int16)
    counts = []
    for seed in range(6):
        before = img.copy()
        n = draw_distractors(np.random.default_rng(seed), img, cfg, np.zeros(3))
        counts.append(n)
        assert 0 <= n <= cfg.distractors
        assert (n > 0) == bool((img != before).any())
    assert max(counts) > 0


def test_study_has_more_and_smaller_objects_than_the_default(tmp_path) -> None:
    make_synthetic_coco(tmp_path / "d", num_train=40, num_val=0, masks=False)
    make_synthetic_coco(tmp_path / "s", num_train=40, num_val=0, masks=False, recipe="study")
    stats = {}
    for name in ("d", "s"):
        data = annotations(str(tmp_path / name))
        sizes = [np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"]]
        stats[name] = (len(data["annotations"]) / 40, float(np.median(sizes)))
    assert stats["s"][0] > 1.5 * stats["d"][0]
    assert stats["s"][1] < stats["d"][1]


def test_recipe_errors_name_the_recipe_and_knobs() -> None:
    with pytest.raises(ValueError, match="unknown synthetic recipe 'hard'"):
        recipe_config("hard")
    with pytest.raises(ValueError, match="box_jitter"):
        SyntheticConfig(box_jitter=-1.0)
    assert recipe_config("study", max_objects=3).max_objects == 3
    assert STUDY_SPLITS["num_train"] >= 2000 and STUDY_SPLITS["num_val"] >= 500


def test_study_exact_is_the_study_without_label_jitter() -> None:
    # same images and validation set (the jitter has its own generator, see the test
    # above); only the training boxes are exact
    assert RECIPES["study_exact"] == {**RECIPES["study"], "box_jitter": 0.0}
    assert recipe_config("study_exact") == recipe_config("study", box_jitter=0.0)


def test_held_out_test_split_is_exact_and_can_be_added_later(tmp_path) -> None:
    """Issue 18: a test split for choices made on val. Written only when asked (the default
    set is unchanged), exact boxes even in a jittered recipe, and the same whether written
    with the others or added afterwards (image i depends on the seed, split and i only)."""
    at_once, later = str(tmp_path / "once"), str(tmp_path / "later")
    out = make_synthetic_coco(at_once, num_train=3, num_val=2, num_test=3, image_size=(64, 64),
                              masks=False, recipe="study")
    assert out.annotation_file("test") == out.root / "annotations" / "instances_test.json"
    assert len(annotations(at_once, "test")["images"]) == 3
    make_synthetic_coco(later, num_train=3, num_val=2, image_size=(64, 64), masks=False,
                        recipe="study")
    assert not os.path.exists(os.path.join(later, "annotations", "instances_test.json"))
    make_synthetic_coco(later, num_test=3, image_size=(64, 64), masks=False, recipe="study",
                        splits=("test",))
    assert digest(at_once) == digest(later)
    exact = str(tmp_path / "exact")
    make_synthetic_coco(exact, num_test=3, image_size=(64, 64), masks=False,
                        recipe="study_exact", splits=("test",))
    assert annotations(exact, "test")["annotations"] == annotations(at_once, "test")[
        "annotations"]  # the jitter touches training boxes only
    assert annotations(at_once, "test")["images"] != [] and \
        annotations(at_once, "test") != annotations(at_once, "val")
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        make_synthetic_coco(str(tmp_path / "bad"), splits=("tset",))
    with pytest.raises(ValueError, match="num_test must be >= 0"):
        make_synthetic_coco(str(tmp_path / "bad"), num_test=-1)


def test_third_study_set_differs_where_it_matters(tmp_path) -> None:
    """Issue 18, point 5: 'study_large' has fewer classes and larger objects than the study
    set (so many high-IoU proposals per object early), exact labels; its twin jitters them."""
    stats = {}
    for recipe in ("study", "study_large"):
        root = str(tmp_path / recipe)
        make_synthetic_coco(root, num_train=30, num_val=0, image_size=(256, 256),
                            masks=False, recipe=recipe)
        data = annotations(root)
        sides = sorted((a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in data["annotations"])
        stats[recipe] = (len(data["categories"]), sides[len(sides) // 2],
                         len(data["annotations"]) / 30)
    assert stats["study_large"][0] == 3 < stats["study"][0]
    assert stats["study_large"][1] > 2 * stats["study"][1]  # median object side
    assert stats["study_large"][2] < stats["study"][2]  # objects per image
    assert RECIPES["study_large"]["box_jitter"] == 0.0
    assert RECIPES["study_large_jitter"] == {**RECIPES["study_large"], "box_jitter": 3.0}
