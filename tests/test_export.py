"""`dynrcnn export` (issue 17, point 3): the exported files load in a process where
`import dynrcnn` fails and give the dynrcnn model's detections on the validation images;
what cannot be exported says so in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from dynrcnn.cli import main
from dynrcnn.engine import EvalConfig, load_model_for_eval

pytestmark = pytest.mark.usefixtures("single_thread")
SIZE = ["--min-size", "96", "--max-size", "96"]

# Runs in a fresh interpreter with dynrcnn made unimportable: only torch + torchvision.
NO_DYNRCNN = textwrap.dedent("""
    import sys
    sys.modules["dynrcnn"] = None
    try:
        import dynrcnn  # noqa: F401
        raise SystemExit("dynrcnn is importable")
    except ImportError:
        pass
    import torch, torchvision
    torch.set_num_threads(1)
    tv_file, ts_file, images_file, out = sys.argv[1:]
    images = torch.load(images_file)
    f = torch.load(tv_file, weights_only=True)
    model = getattr(torchvision.models.detection, f["constructor"])(
        weights=None, weights_backbone=None, **f["kwargs"])
    model.load_state_dict(f["state_dict"])  # strict
    with torch.no_grad():
        tv = model.eval()(images)
    extra = {"categories.json": ""}
    scripted = torch.jit.load(ts_file, _extra_files=extra)
    with torch.no_grad():
        _, ts = scripted(images)
    torch.save({"torchvision": tv, "torchscript": ts, "categories": f["categories"],
                "ts_categories": extra["categories.json"]}, out)
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The synthetic set and two 2-iteration runs: MobileNetV3 FPN (torchvision has its
    constructor) and tiny_fpn (it has none)."""
    root = tmp_path_factory.mktemp("export")
    data = str(root / "data")
    assert main(["make-synthetic", "--out", data, "--num-train", "4", "--num-val", "3",
                 "--image-size", "96", "96"]) == 0
    runs = {}
    for backbone in ("mobilenet_v3_large_fpn", "tiny_fpn"):
        out = root / backbone
        assert main(["train", "--data-dir", data, "--backbone", backbone, "--iterations", "2",
                     "--out-dir", str(out), "--num-workers", "0", "--no-progress",
                     "--no-plot", "--model-kwargs", '{"box_score_thresh": 0.0}',
                     *SIZE]) == 0
        runs[backbone] = str(out / "model_final.pth")
    images = [pil_to_tensor(Image.open(p).convert("RGB")).float() / 255
              for p in sorted((Path(data) / "val").glob("*.png"))]
    return runs, images, json.loads((Path(data) / "annotations" /
                                     "instances_val.json").read_text())["categories"]


def reference(weights: str, images):
    model, _ = load_model_for_eval(EvalConfig(weights=weights))
    with torch.no_grad():
        return model(images)


def assert_same(expected, actual):
    for e, a in zip(expected, actual, strict=True):
        assert len(e["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(a["scores"], e["scores"], atol=1e-5, rtol=0)
        assert torch.equal(a["labels"], e["labels"])


def assert_same_set(expected, actual, score_tol=1e-4, box_tol=1e-2):
    """The same detections up to the order of near-tied scores (onnxruntime's sort and
    float rounding differ from torch's): every detection has a partner of its label with
    a score and box within tolerance, except ties at the top-k cut."""
    for e, a in zip(expected, actual, strict=True):
        assert len(e["boxes"]) > 0 and len(a["boxes"]) == len(e["boxes"])
        free = torch.ones(len(a["boxes"]), dtype=torch.bool)
        cut = float(e["scores"].min()) + score_tol
        for box, label, score in zip(e["boxes"], e["labels"], e["scores"]):
            close = free & (a["labels"] == label) & ((a["scores"] - score).abs() <= score_tol) \
                & ((a["boxes"] - box).abs().amax(dim=1) <= box_tol)
            if close.any():
                free[torch.nonzero(close)[0, 0]] = False
            else:
                assert float(score) <= cut, (box, label, score)


def test_exported_files_load_without_dynrcnn_with_the_same_detections(trained, tmp_path,
                                                                      capsys):
    runs, images, categories = trained
    tv_file, ts_file = tmp_path / "model_tv.pth", tmp_path / "model.pt"
    assert main(["export", "--weights", runs["mobilenet_v3_large_fpn"], "--format",
                 "torchvision", "--out", str(tv_file)]) == 0
    assert "fasterrcnn_mobilenet_v3_large_fpn" in capsys.readouterr().out
    assert main(["export", "--weights", runs["tiny_fpn"], "--format", "torchscript",
                 "--out", str(ts_file)]) == 0
    f = torch.load(tv_file, weights_only=True)
    assert set(f) == {"constructor", "kwargs", "state_dict", "categories"}
    assert f["kwargs"] == {"num_classes": 6, "min_size": 96, "max_size": 96,
                           "rpn_nms_thresh": 0.85, "box_score_thresh": 0.0}
    images_file, out = tmp_path / "images.pt", tmp_path / "out.pt"
    torch.save(images, images_file)
    subprocess.run([sys.executable, "-c", NO_DYNRCNN, str(tv_file), str(ts_file),
                    str(images_file), str(out)], check=True, timeout=600)
    result = torch.load(out)
    assert_same(reference(runs["mobilenet_v3_large_fpn"], images), result["torchvision"])
    assert_same(reference(runs["tiny_fpn"], images), result["torchscript"])
    expected = [{"id": c["id"], "name": c["name"]} for c in categories]
    assert result["categories"] == expected
    assert json.loads(result["ts_categories"]) == expected


def test_what_cannot_be_exported_is_said_in_one_line(trained, tmp_path, capsys):
    runs, _, _ = trained
    out = str(tmp_path / "x.pth")
    assert main(["export", "--weights", runs["tiny_fpn"], "--format", "torchvision",
                 "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--format torchscript" in err and "tiny_fpn" in err
    assert main(["export", "--weights", runs["tiny_fpn"], "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    state = tmp_path / "bare.pth"
    torch.save(torch.load(runs["tiny_fpn"], weights_only=True)["model"], state)
    assert main(["export", "--weights", str(state), "--out", out]) == 2
    assert "--num-classes is needed" in capsys.readouterr().err
    assert not Path(out).exists()


def calibrated_model(images):
    """A MobileNetV3-FPN Dynamic R-CNN whose BatchNorm statistics come from `images`: with
    the initial statistics its activations fade out and all scores tie, which leaves the
    order of the detections to float rounding."""
    from dynrcnn.modeling import build_detector

    torch.manual_seed(0)
    model = build_detector("dynamic_rcnn", "mobilenet_v3_large_fpn", num_classes=6,
                           min_size=96, max_size=96)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model.backbone(model.transform(images)[0].tensors)
    return model.eval()


def test_onnx_export_runs_in_onnxruntime_with_the_same_detections(trained, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _, images, categories = trained
    model = calibrated_model(images)
    state, path = tmp_path / "bare.pth", tmp_path / "model.onnx"
    torch.save(model.state_dict(), state)
    ann = str(tmp_path / "ann.json")
    Path(ann).write_text(json.dumps({"categories": categories}))
    assert main(["export", "--weights", str(state), "--arch", "dynamic_rcnn", "--backbone",
                 "mobilenet_v3_large_fpn", "--num-classes", "6", "--ann", ann, *SIZE,
                 "--format", "onnx", "--out", str(path)]) == 0
    assert "[3, 96, 96]" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["input_size"] == "96"
    assert json.loads(meta["categories"]) == [{"id": c["id"], "name": c["name"]}
                                              for c in categories]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"]
    results = []
    for image in images:  # the validation images are 96 x 96 already
        boxes, labels, scores = session.run(None, {"image": image.numpy()})
        results.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)})
    with torch.no_grad():
        assert_same_set(model(images), results)
    with pytest.raises(Exception, match="image"):  # another size is refused, not misread
        session.run(None, {"image": torch.rand(3, 80, 96).numpy()})


def test_onnx_without_the_onnx_package_is_one_line(trained, tmp_path, capsys, monkeypatch):
    runs, _, _ = trained
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--weights", runs["tiny_fpn"], "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install onnx" in capsys.readouterr().err
