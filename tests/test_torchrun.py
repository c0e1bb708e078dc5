"""Two gloo ranks under torchrun: shared T and beta, DDP in step, distributed evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, Tuple

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from engine_helpers import TESTS_DIR, fake_datasets  # noqa: E402

from dynrcnn.engine import TrainConfig, config_from_dict, load_checkpoint, read_jsonl  # noqa: E402

# One intra-op thread (conftest.single_thread): faster for tiny models on a shared machine,
# and bitwise comparisons between runs need the same thread count in every run.
pytestmark = pytest.mark.usefixtures("single_thread")


TORCHRUN_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
import torch
torch.set_num_threads(1)
from engine_helpers import fake_datasets, small_config
from dynrcnn.engine import Trainer, evaluate

out = {out!r}
rank = int(os.environ["RANK"])
train_ds, val_ds = fake_datasets(os.path.join(out, "data"))

def hook(trainer, n):
    s = trainer.dynamic_state
    with open(os.path.join(out, f"rank{{rank}}.jsonl"), "a") as f:
        f.write(json.dumps({{"iteration": n, "iou_thr": s.iou_thr.item(),
                            "beta": s.beta.item(), "records": s.records,
                            "lr": trainer.optimizer.param_groups[0]["lr"],
                            "param_sum": sum(float(p.double().sum())
                                             for p in trainer.model.parameters())}}) + "\\n")

trainer = Trainer(small_config(os.path.join(out, "run"), batch_size=1, iterations=6),
                  train_dataset=train_ds, hooks=[hook])
summary = trainer.train()
metrics = evaluate(trainer.model, val_ds, batch_size=1, progress=False, save_results=True,
                   out_dir=os.path.join(out, "eval") if rank == 0 else None)
if rank == 0:
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({{"summary": summary, "metrics": metrics}}, f)
trainer.close()
"""


def test_torchrun_two_ranks_share_t_and_beta(tmp_path, fake_coco):
    out = str(tmp_path)
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT.format(tests_dir=TESTS_DIR, out=out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    logs = [read_jsonl(str(tmp_path / f"rank{r}.jsonl")) for r in range(2)]
    assert [r["iteration"] for r in logs[0]] == list(range(1, 7))
    for a, b in zip(*logs):
        assert (a["iou_thr"], a["beta"], a["records"], a["lr"]) == \
            (b["iou_thr"], b["beta"], b["records"], b["lr"])
        assert a["param_sum"] == pytest.approx(b["param_sum"], rel=1e-9)  # DDP in step
    assert (logs[0][-1]["iou_thr"], logs[0][-1]["beta"]) != (0.4, 1.0)  # T/beta did move

    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["summary"]["world_size"] == 2
    ckpt = load_checkpoint(tmp_path / "run" / "model_final.pth")
    assert len(ckpt["rng"]) == 2 and ckpt["world_size"] == 2
    # linear scaling: total batch 2 -> lr as configured (scale_lr=False here)
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.01)

    # distributed evaluation (uneven shards of 3 + 2 images) equals a single-process one
    from dynrcnn.engine.builders import build_model
    from dynrcnn.engine.evaluator import run_inference

    _, val_ds = fake_datasets(str(tmp_path / "data"))
    cfg = config_from_dict(TrainConfig, ckpt["config"])
    model = build_model(cfg, cfg.num_classes)
    model.load_state_dict(ckpt["model"])
    single = run_inference(model.eval(), val_ds, torch.device("cpu"), progress=False)
    gathered = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert single, "the model should detect something to compare"

    def key(r: Dict[str, Any]) -> Tuple[int, float]:
        return r["image_id"], -r["score"]

    assert len(gathered) == len(single)
    for a, b in zip(sorted(gathered, key=key), sorted(single, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
    assert result["metrics"]["bbox"] == pytest.approx(
        json.loads((tmp_path / "eval" / "metrics.json").read_text())["bbox"])
