"""Pretrain the tiny_fpn trunk as a Fashion-MNIST classifier: the stand-in for ImageNet weights.

No ImageNet weights can be fetched on the project's machines, yet users fine-tune pretrained
trunks. This script makes one from real images: TinyTrunk (dynrcnn.modeling.backbones) plus
a global-average-pool linear classifier learns Fashion-MNIST's ten classes from its
*training* file only. The detection scenes of benchmarks/fashion_scenes.py take their val
and test products from Fashion-MNIST's test file, so nothing the detector is scored on was
seen here.

Each training image is shown as fashion_scenes draws a product: scaled so its 28-px frame
spans a side log-uniform in [min_frame, max_frame] (aspect jittered by up to 25%), its
pixels of grey level >= `ink` pasted at a random place on a dark textured canvas, and
normalized as the detector's transform normalizes (ImageNet mean / std), so the trunk
learns the inputs and scales it will see. The accuracy is measured on Fashion-MNIST's test
file (10,000 images) drawn the same way with a fixed generator; nothing is chosen on it.

Output: `--out FILE` holds the trunk's state_dict, which `dynrcnn train --backbone-weights
FILE --backbone tiny_fpn` loads; `FILE.state.pth` holds the training state (written
atomically every `--save-every` steps and at each epoch's end): rerun the same command to
continue where it stopped, bit for bit (each batch's draws come from a generator seeded by
(seed, epoch, batch)). `--report PREFIX` writes PREFIX.md / PREFIX.json: accuracy, loss
per epoch, the weights' SHA-256, command, commit, date, machine, time.

    python benchmarks/pretrain_trunk.py --out weights/tiny_fpn_fashion.pth \
        --report benchmarks/results/pretrain_tiny_fpn_fashion
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_scenes import (  # noqa: E402  (a script beside this one, not a package)
    DEBIAN_DIR,
    DEBIAN_PACKAGE,
    FILES,
    SourceError,
    fetch_debian_package,
    load_fashion_mnist,
)

from dynrcnn.engine.checkpoint import atomic_save, atomic_write_text  # noqa: E402
from dynrcnn.modeling.backbones import TinyTrunk  # noqa: E402
from dynrcnn.study.report import cpu_model_name, git_commit  # noqa: E402

# torchvision's GeneralizedRCNNTransform defaults, which every dynrcnn detector uses
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
TEST_DRAW_SEED = 20261207  # the test images' placement: fixed, whatever --seed is
NUM_CLASSES = 10


@dataclass
class PretrainConfig:
    """What is trained; any change makes a saved training state another run's."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    canvas: int = 64
    min_frame: float = 20.0
    max_frame: float = 64.0
    ink: int = 40
    seed: int = 0
    limit_train: int = 0  # 0: all 60,000 training images (tests use a few)
    limit_test: int = 0  # 0: all 10,000 test images


class TrunkClassifier(nn.Module):
    """TinyTrunk, global average pooling and one linear layer over its last stage."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = TinyTrunk()
        self.head = nn.Linear(TinyTrunk.channels[-1], NUM_CLASSES)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.trunk(images).mean(dim=(2, 3)))


def draw(products: Tensor, gen: torch.Generator, cfg: PretrainConfig) -> Tensor:
    """Products (B, 28, 28) uint8 as scene crops (B, 3, canvas, canvas), normalized.

    One affine grid per product places its 28-px frame, scaled and jittered, at a random
    spot (partly outside the canvas when the frame is larger); grid_sample's zero padding
    leaves the rest below `ink`, where the textured background shows."""
    b, size = products.shape[0], cfg.canvas
    u = torch.rand(b, 6, generator=gen)
    side = torch.exp(math.log(cfg.min_frame) + u[:, 0] * math.log(cfg.max_frame / cfg.min_frame))
    aspect = torch.exp(math.log(0.8) + u[:, 1] * math.log(1.25 / 0.8))
    width, height = side * aspect.sqrt(), side / aspect.sqrt()
    # the frame's centre: anywhere that keeps at least half of it on the canvas
    cx = (u[:, 2] * (size - width / 2).clamp(min=1) + width / 4) / size * 2 - 1
    cy = (u[:, 3] * (size - height / 2).clamp(min=1) + height / 4) / size * 2 - 1
    sx, sy = size / width, size / height
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, -cx * sx
    theta[:, 1, 1], theta[:, 1, 2] = sy, -cy * sy
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    pixels = F.grid_sample(products[:, None].float(), grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    coarse = torch.rand(b, 1, 5, 5, generator=gen) * 20
    low = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.randn(b, 1, size, size, generator=gen) * 4
    background = (low + noise + 4).clamp(0, cfg.ink - 1)
    grey = torch.where(pixels >= cfg.ink, pixels, background).round() / 255
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (grey.expand(-1, 3, -1, -1) - mean) / std


def _batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + batch)


def learning_rate(cfg: PretrainConfig, step: int, total: int) -> float:
    """Linear warmup, then cosine decay to 0 at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, cfg: PretrainConfig,
             batch: int = 500) -> float:
    """Top-1 accuracy on `images` drawn with the fixed test generator."""
    model.eval()
    gen = torch.Generator().manual_seed(TEST_DRAW_SEED)
    correct = 0
    for start in range(0, len(images), batch):
        x = draw(images[start:start + batch], gen, cfg)
        correct += int((model(x).argmax(1) == labels[start:start + batch]).sum())
    model.train()
    return correct / max(1, len(images))


def _fresh_state(cfg: PretrainConfig) -> Dict[str, Any]:
    torch.manual_seed(cfg.seed)
    model = TrunkClassifier()
    return {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": None,
            "epoch": 0, "batch": 0, "running": 0.0, "losses": [], "seconds": 0.0,
            "done": False}


def _load_state(path: Path, cfg: PretrainConfig) -> Dict[str, Any]:
    if not path.is_file():
        return _fresh_state(cfg)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != dataclasses.asdict(cfg):
        raise SystemExit(f"pretrain_trunk.py: error: {path} holds a training state of other "
                         "settings; rerun with those, or delete it to start over")
    return state


def pretrain(arrays: Dict[str, np.ndarray], cfg: PretrainConfig, out: Path,
             log: Callable[[str], None] = print, save_every: int = 100,
             stop_after: Optional[int] = None, progress: bool = False) -> Dict[str, Any]:
    """Train (or continue training) and write the trunk's weights to `out`; returns the
    summary (accuracy, losses, seconds). `stop_after` steps: stop early as an interrupted
    run would (tests)."""
    state_path = Path(str(out) + ".state.pth")
    state = _load_state(state_path, cfg)
    model = TrunkClassifier()
    model.load_state_dict(state["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                weight_decay=cfg.weight_decay)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    images = torch.from_numpy(arrays["train_images"].copy())
    labels = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    if cfg.limit_train:
        images, labels = images[:cfg.limit_train], labels[:cfg.limit_train]
    per_epoch = len(images) // cfg.batch_size
    if per_epoch == 0:
        raise SystemExit(f"pretrain_trunk.py: error: --batch-size {cfg.batch_size} exceeds "
                         f"the {len(images)} training images")
    total = per_epoch * cfg.epochs
    if state["epoch"] or state["batch"]:
        log(f"resuming at epoch {state['epoch'] + 1}, batch {state['batch']}")
    bar = _progress_bar(total, state["epoch"] * per_epoch + state["batch"], progress)
    steps_run, clock = 0, [time.perf_counter()]

    def save() -> None:
        now = time.perf_counter()  # training time so far, across resumed invocations
        state.update(model=model.state_dict(), optimizer=optimizer.state_dict(),
                     seconds=state["seconds"] + now - clock[0])
        clock[0] = now
        atomic_save(state, state_path)

    model.train()
    while not state["done"] and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        order = torch.randperm(len(images), generator=_batch_generator(cfg.seed, epoch, -1))
        for batch in range(state["batch"], per_epoch):
            if stop_after is not None and steps_run >= stop_after:
                save()
                return {"stopped": True}
            step = epoch * per_epoch + batch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total)
            index = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]
            x = draw(images[index], _batch_generator(cfg.seed, epoch, batch), cfg)
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["running"] += loss.item()
            steps_run += 1
            state["batch"] = batch + 1
            bar(f"epoch {epoch + 1}/{cfg.epochs} loss {state['running'] / (batch + 1):.3f}")
            if not progress and (step + 1) % 50 == 0:
                log(f"step {step + 1}/{total} epoch {epoch + 1} loss {loss.item():.3f}")
            if (batch + 1) % save_every == 0:
                save()
        state["losses"].append(state["running"] / per_epoch)
        state["epoch"], state["batch"], state["running"] = epoch + 1, 0, 0.0
        log(f"epoch {epoch + 1}/{cfg.epochs}: mean loss {state['losses'][-1]:.4f}")
        save()
    state["done"] = True
    save()
    atomic_save(model.trunk.state_dict(), out)
    test_images = torch.from_numpy(arrays["test_images"].copy())
    test_labels = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    if cfg.limit_test:
        test_images, test_labels = test_images[:cfg.limit_test], test_labels[:cfg.limit_test]
    acc = accuracy(model, test_images, test_labels, cfg)
    log(f"test accuracy {100 * acc:.2f}% on {len(test_images)} Fashion-MNIST test images")
    return {"stopped": False, "test_accuracy": acc, "test_images": len(test_images),
            "train_images": len(images), "steps": total, "epoch_losses": state["losses"],
            "train_seconds": state["seconds"], "sha256": sha256(out)}


def _progress_bar(total: int, initial: int, enabled: bool) -> Callable[[str], None]:
    if not enabled:
        return lambda _text: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(text: str) -> None:
        bar.set_postfix_str(text, refresh=False)
        bar.update(1)

    return update


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_report(prefix: Path, summary: Dict[str, Any], cfg: PretrainConfig, out: Path,
                 command: str) -> None:
    info = {"command": command, "commit": git_commit(os.path.dirname(os.path.abspath(__file__))),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": f"{cpu_model_name()}, {os.cpu_count()} logical cores",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "weights": os.path.basename(out), "config": dataclasses.asdict(cfg), **summary}
    atomic_write_text(json.dumps(info, indent=1), str(prefix) + ".json")
    losses = ", ".join(f"{x:.3f}" for x in summary["epoch_losses"])
    lines = [
        "# The tiny_fpn trunk pretrained on Fashion-MNIST's training file", "",
        f"- command: `{command}`", f"- commit: {info['commit']}", f"- date: {info['date']}",
        f"- machine: {info['machine']}; torch {info['torch']}, {info['threads']} thread(s)",
        f"- weights: `{info['weights']}`, SHA-256 `{summary['sha256']}` (not committed: the "
        "command above rebuilds it, seeded)",
        f"- trained on {summary['train_images']} training images, {cfg.epochs} epochs of "
        f"{summary['steps'] // cfg.epochs} steps (batch {cfg.batch_size}, SGD lr {cfg.lr} "
        f"cosine, seed {cfg.seed}), {summary['train_seconds'] / 60:.1f} min",
        f"- images drawn as the scenes draw products: frame {cfg.min_frame:g}-"
        f"{cfg.max_frame:g} px on a {cfg.canvas}-px textured canvas", "",
        "| test images | top-1 accuracy | mean training loss per epoch |", "|---:|---:|---|",
        f"| {summary['test_images']} | {100 * summary['test_accuracy']:.2f}% | {losses} |", "",
        "The test images are Fashion-MNIST's test file, which the scenes' val and test splits "
        "draw from: they measure the trunk, they were not used to choose anything.", ""]
    atomic_write_text("\n".join(lines), str(prefix) + ".md")


def _source(args: argparse.Namespace) -> Path:
    if args.source is not None:
        return args.source
    if all((DEBIAN_DIR / name).is_file() for name in FILES.values()):
        return DEBIAN_DIR
    return fetch_debian_package(args.cache / DEBIAN_PACKAGE)


def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(prog="python benchmarks/pretrain_trunk.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the trunk weights file")
    parser.add_argument("--report", type=Path, default=None,
                        help="write PREFIX.md and PREFIX.json")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--limit-train", type=int, default=0,
                        help="use the first N training images (0: all)")
    parser.add_argument("--limit-test", type=int, default=0,
                        help="score on the first N test images (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--save-every", type=int, default=100,
                        help="write the training state every N steps")
    parser.add_argument("--source", type=Path, default=None,
                        help="directory of Zalando's four .gz files")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dynrcnn")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the SHA-256 check of the source files (tests)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--limit-train", args.limit_train, 0),
                             ("--limit-test", args.limit_test, 0),
                             ("--threads", args.threads, 0), ("--save-every", args.save_every, 1)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, limit_train=args.limit_train,
                         limit_test=args.limit_test)
    try:
        arrays = load_fashion_mnist(_source(args), verify=not args.no_verify)
    except SourceError as exc:
        print(f"python benchmarks/pretrain_trunk.py: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = pretrain(arrays, cfg, args.out, save_every=args.save_every,
                       progress=sys.stderr.isatty(),
                       log=lambda text: print(text, flush=True))
    print(f"trunk weights -> {args.out} (load with --backbone tiny_fpn --backbone-weights "
          f"{args.out})")
    if args.report is not None:
        command = " ".join(["python benchmarks/pretrain_trunk.py",
                            *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
        write_report(args.report, summary, cfg, args.out, command)
        print(f"report -> {args.report}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__: List[str] = ["PretrainConfig", "TrunkClassifier", "draw", "pretrain", "main"]
