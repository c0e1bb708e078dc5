"""The training loop: SGD + warmup/step schedule, AMP on CUDA, DDP under torchrun,
crash-safe checkpoints, exact resume, JSONL log, progress bar.

Exact resume: a checkpoint at iteration k holds the model (with DynamicState: T, beta and
their histories), optimizer, scheduler, GradScaler, every rank's RNG states and the config.
The data order is a function of (seed, iteration) (see sampling.py), so `resume=True` runs
iterations k+1.. exactly as the uninterrupted run would have (same world size).

Only rank 0 writes files. Host syncs: the loss terms stay on the device except at log
iterations (log_period) and checkpoints; the non-finite-loss check runs every iteration on
the CPU (where it is free) and with the log on GPUs (see logger.LossMonitor).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dynrcnn.dynamic import MASK_IOU_BEFORE
from dynrcnn.engine.builders import (
    build_model,
    build_train_dataset,
    build_val_dataset,
    check_val_categories,
    dataset_categories,
    get_dynamic_state,
)
from dynrcnn.engine.checkpoint import (
    Checkpointer,
    capture_rng_state,
    prepare_run_dir,
    restore_rng_state,
)
from dynrcnn.engine.config import (
    TrainConfig,
    UsageError,
    config_to_dict,
    save_config,
    with_defaults,
)
from dynrcnn.engine.distributed import (
    all_reduce_mean,
    broadcast_buffers,
    gather_objects,
    init_distributed,
    shutdown,
    sync_dynamic_state,
)
from dynrcnn.engine.errors import Interrupted
from dynrcnn.engine.logger import JsonlWriter, LossMonitor
from dynrcnn.engine.sampling import AugmentedDataset, ResumableBatchSampler, collate, move_to_device
from dynrcnn.engine.schedule import build_optimizer, build_scheduler
from dynrcnn.modeling.dynamic_roi_heads import read_match_diagnostics

log = logging.getLogger("dynrcnn.engine")
Hook = Callable[["Trainer", int], None]
CHECKPOINT_FORMAT = 1
# config fields that may change between a run and its resume without a warning
_RESUME_FREE = {"resume", "overwrite", "progress", "plot", "num_workers", "log_period",
                "eval_period", "checkpoint_period", "device", "keep_checkpoints",
                "log_seconds"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def effective_lr(config: TrainConfig, world_size: int) -> float:
    """config.lr, linearly scaled to the total batch (config.batch_size * `world_size`, the
    number of processes) when config.scale_lr."""
    if not config.scale_lr:
        return config.lr
    return config.lr * config.batch_size * world_size / config.lr_reference_batch


class Trainer:
    """Builds everything in __init__ (and loads the last checkpoint when config.resume);
    train() runs to config.iterations and returns a summary.

    Args:
        config: the run's TrainConfig.
        train_dataset, val_dataset: datasets with CocoDetection's interface; by default
            built from the config's paths.
        hooks: callables (trainer, iteration) run on every rank after each iteration (after
            its checkpoint), e.g. for extra logging.
    """

    def __init__(self, config: TrainConfig, train_dataset: Any = None, val_dataset: Any = None,
                 hooks: Sequence[Hook] = ()) -> None:
        # Before any data is read, a used --out-dir is refused (or, with overwrite, cleared
        # by rank 0). Every rank checks before the rendezvous in init_distributed, so none
        # can see the files rank 0 writes afterwards.
        prepare_run_dir(config.out_dir, config.resume, config.overwrite, delete=False)
        self.dist = init_distributed(config.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.hooks = list(hooks)
        if self.is_main:
            prepare_run_dir(config.out_dir, config.resume, config.overwrite)
        self.train_dataset = train_dataset if train_dataset is not None else \
            build_train_dataset(config)
        self._val_dataset = val_dataset
        data_classes = int(self.train_dataset.num_classes)
        num_classes = config.num_classes or data_classes
        if num_classes < data_classes:
            raise UsageError(f"--num-classes {num_classes} is smaller than the training "
                             f"set's {data_classes} (background included)")
        self.config = dataclasses.replace(config, num_classes=num_classes)
        cfg = self.config
        if cfg.eval_period:  # fail now, not after hours of training
            check_val_categories(self.train_dataset, self.val_dataset)
        self.amp = cfg.amp and self.device.type == "cuda"
        if cfg.amp and not self.amp and self.is_main:
            warnings.warn("amp=True is ignored: mixed precision needs CUDA, training runs in "
                          "float32 on the CPU", RuntimeWarning, stacklevel=2)

        # Same seed on every rank: the ranks build identical models without relying on DDP.
        seed_everything(cfg.seed)
        self.model = build_model(cfg, num_classes).to(self.device)
        self.dynamic_state = get_dynamic_state(self.model)
        self.base_lr = effective_lr(cfg, self.dist.world_size)
        self.optimizer = build_optimizer(self.model, self.base_lr, cfg.momentum,
                                         cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.iterations, cfg.steps, cfg.gamma,
                                         cfg.warmup_iters, cfg.warmup_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.checkpointer = Checkpointer(cfg.out_dir)
        self.start_iter = 0
        self.iteration = 0
        self.resumed_from: Optional[str] = None
        self.last_checkpoint: Optional[str] = None
        self.last_metrics: Optional[Dict[str, Any]] = None
        self._last_print: Optional[float] = None  # time of the last progress line
        rng = self._resume() if cfg.resume else None

        if self.dist.world_size > 1:
            # broadcast_buffers=False: DDP would otherwise overwrite every rank's buffers
            # with rank 0's before each forward, including DynamicState's local histories,
            # which update() must all-gather from every rank.
            self.ddp_model: nn.Module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None, broadcast_buffers=False,
                find_unused_parameters=cfg.find_unused_parameters)
        else:
            self.ddp_model = self.model
        if self.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
            self.checkpointer.remove_stale_temporaries()
            save_config(cfg, os.path.join(cfg.out_dir, "config.json"))
        # Last, so nothing above shifts the streams: the per-rank training randomness (RPN /
        # RoI sampling) continues from the checkpoint, or starts from seed + rank.
        if rng is not None:
            restore_rng_state(rng)
        else:
            seed_everything(cfg.seed + self.dist.rank)

    # ------------------------------------------------------------------ resume / checkpoints

    def _resume(self) -> Optional[Dict[str, Any]]:
        """Load the newest checkpoint of out_dir that loads (a newer one that does not is
        skipped, and said); returns this rank's RNG state to restore. Never starts over while
        a checkpoint is there: if none loads, UsageError, and nothing is written."""
        path, ckpt, skipped = self.checkpointer.load_newest()
        if self.is_main:
            for bad, why in skipped:
                log.warning("resume: skipped %s: it %s", bad, why)
        if path is None or ckpt is None:
            if skipped:
                raise UsageError(
                    f"--resume: none of the {len(skipped)} checkpoint(s) in "
                    f"{self.config.out_dir} loads (newest: {skipped[0][0]} {skipped[0][1]}); "
                    "nothing was written: fix or move them, or give --overwrite to start over")
            if self.is_main:
                start = (f"from {self.config.init_weights}" if self.config.init_weights
                         else "from scratch")
                log.warning("resume: no checkpoint in %s, starting at iteration 0 %s",
                            self.config.out_dir, start)
            return None
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_iter = self.iteration = int(ckpt["iteration"])
        self.resumed_from = self.last_checkpoint = path
        if self.is_main:
            print(f"resumed from {path} at iteration {self.start_iter}", flush=True)
        self._warn_config_changes(ckpt.get("config", {}))
        states: List[Dict[str, Any]] = ckpt.get("rng", [])
        if len(states) != self.dist.world_size:
            warnings.warn(f"resume: the checkpoint has RNG states of {len(states)} processes, "
                          f"this run has {self.dist.world_size}: sampling is reseeded, so "
                          "the run is not an exact continuation", RuntimeWarning, stacklevel=3)
            seed_everything(self.config.seed + self.dist.rank + self.start_iter)
            return None
        return states[self.dist.rank]

    def _warn_config_changes(self, saved: Dict[str, Any]) -> None:
        current = config_to_dict(self.config)
        # a mask detector's config saved before mask_iou existed trained as mask_iou None
        heads = getattr(getattr(self.model, "module", self.model), "roi_heads", None)
        before = {"dynamic": {"mask_iou": MASK_IOU_BEFORE}} if hasattr(heads, "has_mask") \
            and heads.has_mask() else None
        saved = with_defaults(type(self.config), saved, before)
        changed = sorted(k for k in current if k not in _RESUME_FREE and k in saved
                         and saved[k] != current[k])
        if changed and self.is_main:
            warnings.warn(
                "resume: config differs from the checkpoint's in "
                + ", ".join(f"{k} ({saved[k]!r} -> {current[k]!r})" for k in changed)
                + "; the optimizer and schedule continue from the checkpoint",
                RuntimeWarning, stacklevel=4)

    def checkpoint_state(self, iteration: int) -> Dict[str, Any]:
        """Everything a resume needs at `iteration` (the iterations done); collective
        (gathers every rank's RNG state)."""
        rng = gather_objects(capture_rng_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng if rng is not None else [],
            "config": config_to_dict(self.config),
            "world_size": self.dist.world_size,
            # the data set's category ids and names by label, for eval / predict
            "categories": dataset_categories(self.train_dataset),
        }

    def save_checkpoint(self, iteration: int, final: bool = False) -> Optional[str]:
        """Collective: verify T/beta across ranks, gather RNG states, rank 0 writes.

        Args:
            iteration: the iterations done (the file's name, see Checkpointer.path_for).
            final: write model_final.pth instead.

        Returns:
            The file written on rank 0, None on the other ranks.
        """
        broadcast_buffers(self.model)  # one set of BatchNorm statistics in the checkpoint
        if self.dynamic_state is not None:
            sync_dynamic_state(self.dynamic_state)
        state = self.checkpoint_state(iteration)
        if not self.is_main:
            return None
        self.last_checkpoint = self.checkpointer.save(state, iteration, final=final)
        # after the new file and the pointer are on disk, never before
        self.checkpointer.prune(self.config.keep_checkpoints)
        return self.last_checkpoint

    # ------------------------------------------------------------------ data / eval

    def _train_loader(self) -> DataLoader:
        cfg = self.config
        sampler = ResumableBatchSampler(len(self.train_dataset), cfg.batch_size,
                                        self.dist.rank, self.dist.world_size, cfg.seed,
                                        start_iter=self.start_iter)
        self._batch_sampler = sampler
        return DataLoader(AugmentedDataset(self.train_dataset, cfg.hflip),
                          batch_sampler=sampler, collate_fn=collate,
                          num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                          # own generator: creating the iterator must not draw from (and so
                          # shift) the global torch RNG that resume restores
                          generator=torch.Generator().manual_seed(cfg.seed))

    @property
    def val_dataset(self) -> Any:
        """The validation set: the one given, else built from the config on first use."""
        if self._val_dataset is None:
            self._val_dataset = build_val_dataset(self.config)
        return self._val_dataset

    def evaluate(self, iteration: int) -> Dict[str, Any]:
        """COCO metrics on the val set (collective); rank 0 writes them into
        eval_<iteration>/ and appends them to eval.jsonl, as the metrics at `iteration`."""
        from dynrcnn.engine.evaluator import evaluate

        cfg = self.config
        out = os.path.join(cfg.out_dir, f"eval_{iteration:07d}")
        metrics = evaluate(self.model, self.val_dataset, self.device, cfg.batch_size,
                           cfg.num_workers, out_dir=out if self.is_main else None,
                           progress=cfg.progress)
        if self.is_main:
            writer = JsonlWriter(os.path.join(cfg.out_dir, "eval.jsonl"),
                                 truncate_after=iteration - 1)
            writer.write({"iteration": iteration, **metrics})
            writer.close()
        self.last_metrics = metrics
        return metrics

    # ------------------------------------------------------------------ loop

    def _dynamic_values(self) -> Dict[str, Any]:
        if self.dynamic_state is None:
            return {"iou_thr": None, "beta": None, "records": None}
        return {"iou_thr": self.dynamic_state.iou_thr.item(),
                "beta": self.dynamic_state.beta.item(),
                "records": self.dynamic_state.records}

    def train(self) -> Dict[str, Any]:
        """Run iterations start_iter+1 .. config.iterations; returns the summary."""
        cfg = self.config
        t_start = time.perf_counter()
        last_record: Dict[str, Any] = {}
        if self.start_iter >= cfg.iterations:
            return self._summary(last_record, t_start)
        loader = self._train_loader()
        data_iter = iter(loader)
        writer = JsonlWriter(os.path.join(cfg.out_dir, "log.jsonl"),
                             truncate_after=self.start_iter if self.resumed_from else None) \
            if self.is_main else None
        bar = self._progress_bar()
        monitor = LossMonitor(self.device)
        check_every = 1 if self.device.type == "cpu" else cfg.log_period
        params = [p for p in self.model.parameters() if p.requires_grad]
        window_start, window_iters, window_data = time.perf_counter(), 0, 0.0
        self.ddp_model.train()
        try:
            for it in range(self.start_iter, cfg.iterations):
                n = it + 1
                t0 = time.perf_counter()
                images, targets = next(data_iter)
                images, targets = move_to_device(images, targets, self.device)
                window_data += time.perf_counter() - t0

                with torch.autocast(self.device.type, enabled=self.amp):
                    loss_dict = self.ddp_model(images, targets)
                names = list(loss_dict)
                values = torch.stack([loss_dict[k].detach().float() for k in names])
                monitor.observe(n, names, values)
                is_log = n % cfg.log_period == 0 or n == cfg.iterations
                is_ckpt = n % cfg.checkpoint_period == 0 or n == cfg.iterations
                if n % check_every == 0 or is_log or is_ckpt:
                    monitor.check()  # before the step: a NaN never reaches the weights

                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(sum(loss_dict.values())).backward()
                if cfg.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.iteration = n
                window_iters += 1

                if is_log:
                    now = time.perf_counter()
                    last_record = self._log_record(n, names, values, lr,
                                                   (now - window_start) / window_iters,
                                                   window_data / window_iters)
                    window_start, window_iters, window_data = now, 0, 0.0
                    if writer is not None:
                        writer.write(last_record)
                    if bar is not None:
                        bar.set_postfix(self._bar_fields(last_record), refresh=False)
                    elif self.is_main:
                        self._print_progress(last_record)
                if is_ckpt:
                    self.save_checkpoint(n, final=n == cfg.iterations)
                if cfg.eval_period and (n % cfg.eval_period == 0 or n == cfg.iterations):
                    self.evaluate(n)
                for hook in self.hooks:
                    hook(self, n)
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            raise Interrupted(self.checkpointer.interrupted_line(self.iteration)) from None
        finally:
            del data_iter  # stops loader workers
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        if self.is_main and cfg.plot:
            self._plot()
        return self._summary(last_record, t_start)

    def _log_record(self, n: int, names: List[str], values: torch.Tensor, lr: float,
                    time_per_iter: float, data_time: float) -> Dict[str, Any]:
        losses = all_reduce_mean(values).tolist()  # the one host sync of a log iteration
        record: Dict[str, Any] = {
            "iteration": n,
            "epoch": self._batch_sampler.position(n - 1)[0],
            "total_loss": float(sum(losses)),
            **{k: float(v) for k, v in zip(names, losses)},
            "lr": lr,
            **self._dynamic_values(),
            # Figure-1 diagnostics (props_iou50/60/70, kth_iou, kth_err): means since the
            # previous log line, counted on the device and read only here
            **read_match_diagnostics(self.model),
            "time": time_per_iter,
            "data_time": data_time,
        }
        if self.device.type == "cuda":
            record["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return record

    def _print_progress(self, record: Dict[str, Any]) -> None:
        """Without a progress bar: one line per log iteration at most every log_seconds
        (and the last), so a long run's piped output grows with time, not iterations."""
        now = time.perf_counter()
        n, total = record["iteration"], self.config.iterations
        last = self._last_print
        if last is not None and now - last < self.config.log_seconds and n < total:
            return
        self._last_print = now
        fields = self._bar_fields(record)
        rate = 1.0 / record["time"] if record.get("time") else float("inf")
        eta = int((total - n) * record.get("time", 0.0))
        print(f"it {n}/{total} " + " ".join(f"{k}={v}" for k, v in fields.items())
              + f" {rate:.1f} it/s eta {eta // 60}m{eta % 60:02d}s", flush=True)

    def _progress_bar(self) -> Any:
        # tqdm only on a terminal: piped into a file, its redraws become thousands of lines
        if not (self.is_main and self.config.progress and sys.stderr.isatty()):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.config.iterations, initial=self.start_iter, desc="train",
                    dynamic_ncols=True)

    @staticmethod
    def _bar_fields(record: Dict[str, Any]) -> Dict[str, str]:
        fields = {"loss": f"{record['total_loss']:.3f}", "lr": f"{record['lr']:.2e}"}
        if record.get("iou_thr") is not None:
            fields["T"] = f"{record['iou_thr']:.3f}"
            fields["beta"] = f"{record['beta']:.3f}"
        return fields

    def _plot(self) -> None:
        from dynrcnn.engine.plots import plot_training_curves

        cfg = self.config
        try:
            plot_training_curves(os.path.join(cfg.out_dir, "log.jsonl"),
                                 os.path.join(cfg.out_dir, "curves.png"))
        except (ImportError, ValueError) as exc:  # a missing plot must not fail a run
            warnings.warn(f"no training curves plotted: {exc}", RuntimeWarning, stacklevel=2)

    def _summary(self, record: Dict[str, Any], t_start: float) -> Dict[str, Any]:
        losses = {k: v for k, v in record.items() if k.startswith("loss")}
        summary = {
            "out_dir": self.config.out_dir,
            "start_iter": self.start_iter,
            "iterations": self.iteration,
            "resumed_from": self.resumed_from,
            "checkpoint": self.last_checkpoint,
            "total_loss": record.get("total_loss"),
            "losses": losses,
            # the lr the last iteration used (the optimizer already holds the next one)
            "lr": record.get("lr", self.optimizer.param_groups[0]["lr"]),
            "world_size": self.dist.world_size,
            "time_s": time.perf_counter() - t_start,
            "metrics": self.last_metrics,
        }
        summary.update(self._dynamic_values())
        return summary

    def close(self, clean: bool = True) -> None:
        """Leave the process group if this trainer created it; clean=False when an
        exception is on its way (no final barrier, see distributed.shutdown)."""
        shutdown(self.dist, clean)


def train(config: TrainConfig, train_dataset: Any = None, val_dataset: Any = None,
          hooks: Sequence[Hook] = ()) -> Dict[str, Any]:
    """Trainer(config, train_dataset, val_dataset, hooks).train(), leaving the process group
    afterwards (the CLI entry); see Trainer for the arguments. Returns the summary."""
    trainer = Trainer(config, train_dataset, val_dataset, hooks)
    try:
        summary = trainer.train()
    except BaseException:
        trainer.close(clean=False)
        raise
    trainer.close()
    return summary
