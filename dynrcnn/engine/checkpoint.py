"""Crash-safe checkpoints: atomic writes, a `last_checkpoint` pointer, RNG state capture.

A checkpoint file is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the final name with os.replace (atomic on POSIX), and the
directory is fsync'ed so the rename itself survives a power cut. A process killed at any
point therefore leaves either the previous file or the complete new one under the final
name, never half a file; at worst a stale `.tmp-*` file, which `Checkpointer` removes.

Checkpoints hold only tensors and plain containers of Python primitives, so they load with
torch.load(weights_only=True): no pickled objects, nothing executes on load.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from dynrcnn.engine.errors import UsageError

PathLike = Union[str, "os.PathLike[str]"]
POINTER = "last_checkpoint"
TMP_PREFIX = ".tmp-"
FINAL_NAME = "model_final.pth"
# What a training checkpoint holds at least (Trainer.checkpoint_state).
TRAINING_KEYS = ("model", "optimizer", "scheduler", "iteration")


def _read_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so set it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files with mode 0600; run files get what open() would give them
# (0666 minus the umask), like the PNGs matplotlib writes. Read once: changing the umask
# is process-wide and not thread-safe.
FILE_MODE = 0o666 & ~_read_umask()


def _fsync_dir(directory: str) -> None:
    """Persist a rename (best effort: some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file next to `path`; on success flush+fsync it and os.replace it onto
    `path`; on any exception delete it and leave `path` untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.chmod(tmp, FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_save(obj: Any, path: PathLike) -> None:
    """torch.save(obj, path), atomically: a reader finds the old file or the whole new one
    at `path`, never half a file (see the module docstring)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write `text` into the file `path` atomically (as `atomic_save`); the directory is
    created when missing."""
    with atomic_open(path, "w") as f:
        f.write(text)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """torch.load of the file `path` with weights_only=True onto the CPU."""
    return torch.load(os.fspath(path), map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python `random`, numpy, torch CPU and CUDA as tensors and lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set the RNGs to `state`, a dict of capture_rng_state's (the CUDA states only when
    CUDA is available here with as many devices)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Saves `model_<iteration>.pth` files and the `last_checkpoint` pointer in a directory.

    Only the caller decides who saves (rank 0); this class does no communication.

    Args:
        directory: the run directory the checkpoints go into.
    """

    def __init__(self, directory: PathLike) -> None:
        self.directory = os.fspath(directory)

    def path_for(self, iteration: int, final: bool = False) -> str:
        """The file of the checkpoint at `iteration` (model_<iteration, 7 digits>.pth), or
        model_final.pth when `final`."""
        name = FINAL_NAME if final else f"model_{iteration:07d}.pth"
        return os.path.join(self.directory, name)

    def save(self, state: Dict[str, Any], iteration: int, final: bool = False) -> str:
        """Write the checkpoint atomically, then the pointer (also atomically), so the
        pointer always names a complete file.

        Args:
            state: what to save (tensors and plain containers: see the module docstring).
            iteration: the iteration it was taken at (its file name, see `path_for`).
            final: save as model_final.pth instead.

        Returns:
            The path written.
        """
        path = self.path_for(iteration, final)
        atomic_save(state, path)
        atomic_write_text(os.path.basename(path) + "\n", os.path.join(self.directory, POINTER))
        return path

    def last_checkpoint(self) -> Optional[str]:
        """The file named by the pointer, or None when there is no (valid) pointer."""
        pointer = os.path.join(self.directory, POINTER)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(self.directory, name)
        return path if name and os.path.isfile(path) else None

    def checkpoints(self) -> List[str]:
        """Every checkpoint file in the directory (temporary files excluded)."""
        return sorted(glob.glob(os.path.join(self.directory, "model_*.pth")))

    def newest_first(self) -> List[str]:
        """The checkpoint files a resume may start from, newest first: model_final.pth, then
        model_<iteration>.pth by iteration. The pointer is not trusted alone: it may name a
        file that is gone (deleted, or a disk that filled) while older ones are there."""
        files = self.checkpoints()
        final = [p for p in files if os.path.basename(p) == FINAL_NAME]
        return final + sorted((p for p in files if os.path.basename(p) != FINAL_NAME),
                              reverse=True)

    def load_newest(self) -> Tuple[Optional[str], Optional[Dict[str, Any]],
                                   List[Tuple[str, str]]]:
        """(path, checkpoint) of the newest training checkpoint that loads, or (None, None),
        and the newer files skipped with the reason each one did not load."""
        skipped: List[Tuple[str, str]] = []
        for path in self.newest_first():
            try:
                ckpt = load_checkpoint(path)
            except Exception as exc:  # truncated zip, not a torch file, unreadable, ...
                why = " ".join(str(exc).split()) or type(exc).__name__
                skipped.append((path, f"does not load ({why[:160]})"))
                continue
            missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
            if missing:
                skipped.append((path, f"is not a training checkpoint (no {', '.join(missing)})"))
                continue
            return path, ckpt, skipped
        return None, None, skipped

    def interrupted_line(self, iteration: int) -> str:
        """What a user who stopped a run at `iteration` needs: where it stopped, the newest
        checkpoint and how to go on from it."""
        done = f"interrupted after iteration {iteration}"
        newest = self.newest_first()
        if not newest:
            return f"{done}; no checkpoint was written yet (rerun it with --overwrite)"
        return (f"{done}; the newest checkpoint is {newest[0]}: the same command with "
                "--resume continues from it")

    def prune(self, keep: int) -> List[str]:
        """Delete all but the newest `keep` periodic checkpoints (keep=0: delete none);
        model_final.pth and the file the pointer names are never deleted. Call it after the
        new checkpoint and the pointer are on disk. Returns what it removed."""
        if keep <= 0:
            return []
        current = self.last_checkpoint()
        periodic = [p for p in self.checkpoints() if os.path.basename(p) != FINAL_NAME]
        removed = []
        for path in periodic[:-keep]:  # names sort by iteration (zero-padded)
            if current is not None and os.path.samefile(path, current):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
        return removed

    def remove_stale_temporaries(self) -> List[str]:
        """Delete `.tmp-*` leftovers of a process killed mid-write; returns what it removed."""
        stale = glob.glob(os.path.join(self.directory, TMP_PREFIX + "*"))
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return stale


def refuse_overwrite(out: PathLike, flag: str, **inputs: Optional[PathLike]) -> None:
    """UsageError unless writing `out` (given as `flag`) leaves every input and every
    checkpoint a resume could need intact: `out` may not be one of `inputs` (flag name ->
    path: `weights=...` is --weights) nor a run's checkpoint or its pointer."""
    out = os.fspath(out)
    for name, path in inputs.items():
        if path and os.path.exists(out) and os.path.exists(path) and \
                os.path.samefile(out, path):
            raise UsageError(f"{flag} {out} is the --{name.replace('_', '-')} file: it would "
                             f"be written over; give another {flag}")
    base, folder = os.path.basename(out), os.path.dirname(os.path.abspath(out))
    run_file = base == POINTER or (base.startswith("model_") and base.endswith(".pth"))
    if run_file and os.path.isfile(os.path.join(folder, POINTER)):
        raise UsageError(f"{flag} {out} is a checkpoint of the run in {folder}: it would be "
                         f"written over, and a resume may need it; give another {flag}")


# --------------------------------------------------------------------------- run directory

# What a training run writes into its out_dir (besides checkpoints and temporaries).
RUN_FILES = ("config.json", "log.jsonl", "eval.jsonl", "curves.png", "metrics.json",
             "metrics.md", "results_bbox.json", "results_segm.json", POINTER)


def _check_writable(directory: str) -> None:
    """UsageError naming --out-dir unless files can be created in it (or, when it does not
    exist yet, in its nearest existing parent): probed with a temporary file, which also
    works for root, for whom permission bits say nothing."""
    probe = os.path.abspath(directory)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"--out-dir {directory}: {probe} is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=TMP_PREFIX + "probe.")
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # a resume's cleanup may take it first
            os.remove(tmp)
    except OSError as exc:
        raise UsageError(f"--out-dir {directory}: cannot write in {probe} "
                         f"({exc.strerror or exc})") from None


def prepare_run_dir(directory: PathLike, resume: bool, overwrite: bool,
                    delete: bool = True) -> List[str]:
    """Check a training run's out_dir before anything is built. An existing directory that
    holds files is refused unless `resume` (the run continues there) or `overwrite`: then the
    previous run's files (checkpoints, logs, eval_* folders, metrics, plots) are deleted, so
    nothing stale is read later (e.g. by `compare`). Files a run does not write are left
    alone (delete=False: check only, for the ranks that do not write). Returns the removed
    paths. Raises UsageError naming --out-dir."""
    import shutil

    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UsageError(f"--out-dir {directory} exists and is not a directory")
    _check_writable(directory)
    if not os.path.isdir(directory) or not os.listdir(directory) or resume:
        return []
    if not overwrite:
        raise UsageError(f"--out-dir {directory} is not empty (an earlier run?): give "
                         "--resume to continue it, --overwrite to replace it, or another "
                         "--out-dir")
    if not delete:
        return []
    names = set(RUN_FILES)
    removed = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        run_file = entry in names or entry.startswith(TMP_PREFIX) or \
            (entry.startswith("model_") and entry.endswith(".pth"))
        if os.path.isdir(path) and entry.startswith("eval_") and not os.path.islink(path):
            shutil.rmtree(path)
            removed.append(path)
        elif run_file and not os.path.isdir(path):
            os.remove(path)
            removed.append(path)
    return removed
