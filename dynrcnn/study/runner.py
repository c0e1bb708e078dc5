"""The study runner: (arm, seed) jobs as training run directories, run one thread each, at
most `jobs` side by side, resumable and safe to leave in the background.

Layout of `out_dir`:

    study.log                 progress lines (also printed), appended across invocations
    study.lock                pid of the runner working on out_dir (a second one refuses)
    <arm>/seed<s>/            one training run: job.json (its TrainConfig), train.log (the
                              worker's output), log.jsonl, checkpoints, eval_<it>/metrics.json

A job is finished when its final metrics exist: rerunning skips it. A job with
checkpoints but no final metrics resumes from its last checkpoint (exactly, see the
trainer). Only finished jobs enter the report. Stopping the runner (Ctrl-C, SIGTERM) stops
its workers; the next invocation continues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import TrainConfig, UsageError
from dynrcnn.engine.presets import small_cpu_config
from dynrcnn.study.arms import Arm, check_protocol, seeds_for, select_arms
from dynrcnn.study.layout import final_metrics_path
from dynrcnn.study.settings import pending_evals, split_files
from dynrcnn.study.user import user_config, write_run_files


@dataclass
class StudySpec:
    """What to run. iterations / interval (C) / image_size are the schedule and size of
    every arm (an arm's `schedule` multiplies iterations); core_seeds / other_seeds: seeds
    of the core arms and of the others; jobs: runs side by side (one thread each);
    protocol: "cpu" (300 proposals, NMS 0.7, KI / Kbeta scaled) or "paper" (1000 proposals
    after NMS 0.85 for every arm, KI 75 / Kbeta 10; see dynrcnn.study.arms)."""

    out_dir: str
    data_dir: str
    arms: List[str] = field(default_factory=lambda: ["core"])
    iterations: int = 3000
    interval: int = 50
    image_size: int = 256
    core_seeds: int = 3
    other_seeds: int = 2
    jobs: int = 1
    threads: int = 1
    num_train: int = 2000
    num_val: int = 500
    recipe: str = "study"
    log_period: int = 20
    plot: bool = True  # each run's curves.png (with the Figure-1 row)
    protocol: str = "cpu"
    num_test: int = 500  # held-out split: settings are chosen on val, reported on test
    # The fine-tuning regime: every run starts from this detector checkpoint ("{seed}" is
    # replaced by the run's seed, so that each fine-tuned pair shares its source detector);
    # layers whose class count differs are re-initialized (see dynrcnn.modeling.weights).
    init_weights: Optional[str] = None
    # A study on the user's data (`dynrcnn study`): the TrainConfig fields common to every
    # run (data paths, backbone, sizes, schedule, ...), laid over TrainConfig's defaults;
    # None: the synthetic preset (small_cpu_config on the recipe's generated set).
    base: Optional[Dict[str, Any]] = None
    test_images: Optional[str] = None  # an optional held-out split of the user's data
    test_ann: Optional[str] = None
    gpus: Optional[List[int]] = None  # one run per GPU (CUDA_VISIBLE_DEVICES); None: CPU
    # the test settings every run on the user's data is evaluated at (None: its own only;
    # --best-vs-best: both of settings.BEST_VS_BEST_SETTINGS)
    test_settings: Optional[List[str]] = None

    def __post_init__(self) -> None:
        checks = {"--iterations": self.iterations, "--interval": self.interval,
                  "--image-size": self.image_size, "--core-seeds": self.core_seeds,
                  "--other-seeds": self.other_seeds, "--threads": self.threads,
                  "--num-train": self.num_train, "--num-val": self.num_val,
                  "--num-test": self.num_test}
        for flag, value in checks.items():
            if value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        try:
            for arm in select_arms(self.arms):
                check_protocol(arm, self.protocol)
        except ValueError as exc:
            raise UsageError(f"--arms: {exc}") from None
        if self.init_weights is not None:
            try:
                self.init_weights_of(0)
            except (KeyError, IndexError, ValueError):
                raise UsageError(f"--init-weights {self.init_weights}: the only placeholder "
                                 "a path may hold is {seed}") from None

    def init_weights_of(self, seed: int) -> Optional[str]:
        """The checkpoint the run of `seed` starts from (None: trained from scratch)."""
        return None if self.init_weights is None else self.init_weights.format(seed=seed)


def check_init_weights(jobs: Sequence[Job], spec: StudySpec) -> None:
    """Before anything trains: every job that will train has its source checkpoint (one
    line naming the flag and the missing files, not a failed run per seed)."""
    if spec.init_weights is None:
        return
    sources = {str(spec.init_weights_of(job.seed)) for job in jobs if job.trains()}
    missing = sorted(path for path in sources if not os.path.isfile(path))
    if missing:
        raise UsageError(f"--init-weights: no checkpoint {', '.join(missing)}")


def quick_spec(out_dir: str) -> StudySpec:
    """A smoke study that runs in well under a minute: two arms, two seeds, 4 iterations on
    twelve 64-px images (numbers meaningless; it exercises every path)."""
    return StudySpec(out_dir=out_dir, data_dir=os.path.join(out_dir, "data"),
                     arms=["baseline", "dla_dsl"], iterations=4, interval=2, image_size=64,
                     core_seeds=2, other_seeds=2, num_train=12, num_val=6, num_test=6,
                     log_period=2, plot=False)


@dataclass
class Job:
    arm: Arm
    seed: int
    run_dir: str
    config: TrainConfig
    tag: str = ""  # tells apart runs of one arm and seed in two protocols (--best-vs-best)

    @property
    def name(self) -> str:
        return f"{self.arm.name} seed {self.seed}" + (f" ({self.tag})" if self.tag else "")

    def finished(self) -> bool:
        return os.path.isfile(final_metrics_path(self.run_dir, self.config.iterations))

    def complete(self) -> bool:
        """Finished, and evaluated at every test setting on every held-out split."""
        return self.finished() and not pending_evals(self.run_dir, self.config)

    def trains(self) -> bool:
        """Whether running this job trains: unfinished, or finished without its final
        checkpoint (an archived run that lacks evaluations is trained again)."""
        return not self.finished() or not os.path.isfile(
            os.path.join(self.run_dir, "model_final.pth"))

    def started(self) -> bool:
        return bool(glob.glob(os.path.join(self.run_dir, "model_*.pth")))


def plan(spec: StudySpec, arms: Optional[Sequence[Arm]] = None,
         overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Job]:
    """Every (arm, seed) job of the study (of `arms` instead of spec.arms if given), seed-
    major so that paired comparisons become available early. overrides: extra TrainConfig
    fields per arm name (e.g. eval_period for the learning curve)."""
    jobs = []
    arms = list(arms) if arms is not None else select_arms(spec.arms)
    for seed in range(max(spec.core_seeds, spec.other_seeds)):
        for arm in arms:
            if seed not in seeds_for(arm, spec.core_seeds, spec.other_seeds):
                continue
            run_dir = os.path.join(spec.out_dir, arm.name, f"seed{seed}")
            iterations = max(1, round(spec.iterations * arm.schedule))
            if spec.base is not None:
                config = user_config(spec, arm, seed, run_dir,
                                     (overrides or {}).get(arm.name, {}))
                jobs.append(Job(arm, seed, run_dir, config))
                continue
            config = small_cpu_config(
                spec.data_dir, run_dir, arm.arch, iterations, spec.interval, spec.image_size,
                resume=True, seed=seed, dynamic=arm.dynamic_config(spec.interval, spec.protocol),
                model_kwargs=arm.model_kwargs(spec.protocol), progress=False,
                log_period=spec.log_period,
                plot=spec.plot, init_weights=spec.init_weights_of(seed),
                **(overrides or {}).get(arm.name, {}))
            jobs.append(Job(arm, seed, run_dir, config))
    return jobs


def ensure_study_data(spec: StudySpec, log: Callable[[str], None]) -> None:
    """Generate the study's data set once (fixed seed 0); an existing one must match. A set
    written before the test split existed gets it added (the other splits are untouched:
    image i of a split depends only on the seed, the split and i)."""
    from dynrcnn.data import make_synthetic_coco
    from dynrcnn.data.recipes import info_config, recipe_config

    size = (spec.image_size, spec.image_size)
    val = os.path.join(spec.data_dir, "annotations", "instances_val.json")
    if not os.path.isfile(val):
        log(f"writing the '{spec.recipe}' data set ({spec.num_train} train, {spec.num_val} "
            f"val, {spec.num_test} test, {spec.image_size} px) to {spec.data_dir}")
        start = time.perf_counter()
        make_synthetic_coco(spec.data_dir, num_train=spec.num_train, num_val=spec.num_val,
                            num_test=spec.num_test, image_size=size, seed=0, masks=False,
                            recipe=spec.recipe)
        log(f"data written in {time.perf_counter() - start:.1f} s")
        return
    with open(val) as f:
        info = json.load(f).get("info", {}).get("config", {})
    want = json.loads(json.dumps(info_config(dataclasses.asdict(recipe_config(
        spec.recipe, image_size=size, seed=0)))))
    differ = [f"{k} {info.get(k)!r} (want {v!r})" for k, v in want.items()
              if info.get(k) != v]
    if differ:
        raise UsageError(f"--data {spec.data_dir} is not the '{spec.recipe}' set at "
                         f"{spec.image_size} px: {', '.join(differ)}; use another --data")
    if not os.path.isfile(split_files(spec.data_dir, "test")[1]):
        log(f"adding the held-out test split ({spec.num_test} images) to {spec.data_dir}")
        make_synthetic_coco(spec.data_dir, num_test=spec.num_test, image_size=size, seed=0,
                            masks=False, recipe=spec.recipe, splits=("test",))


class StudyLock:
    """out_dir/study.lock holding this pid; refuses when a live process holds it."""

    def __init__(self, out_dir: str) -> None:
        self.path = os.path.join(out_dir, "study.lock")

    def __enter__(self) -> StudyLock:
        if os.path.isfile(self.path):
            with open(self.path) as f:
                text = f.read().strip()
            pid = int(text) if text.isdigit() else None
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise UsageError(f"{self.path}: study runner {pid} is still working on this "
                                 "--out directory (stop it first, or use another --out)")
        with open(self.path, "w") as f:
            f.write(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        if os.path.isfile(self.path):
            os.remove(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_same_study(spec: StudySpec) -> None:
    """out_dir/study.json records the schedule and sizes; a rerun must not change them
    (a resumed run would silently mix two schedules)."""
    path = os.path.join(spec.out_dir, "study.json")
    fixed = ("iterations", "interval", "image_size", "recipe", "data_dir", "num_train",
             "num_val", "init_weights", "base", "test_ann")
    mine = {k: getattr(spec, k) for k in fixed}
    if spec.base is None:  # a synthetic study's study.json keeps its old form
        mine = {k: v for k, v in mine.items() if k not in ("base", "test_ann")}
    else:  # the user's data: the synthetic recipe's fields would be false for it
        mine = {k: v for k, v in mine.items()
                if k not in ("image_size", "recipe", "num_train", "num_val")}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [f"{k} ({saved[k]!r} -> {mine[k]!r})" for k in mine
                   if k in saved and saved[k] != mine[k]]
        if changed:
            raise UsageError(f"--out {spec.out_dir} holds a study with other settings: "
                             f"{', '.join(changed)}; use another --out directory")
    atomic_write_text(json.dumps(mine, indent=2), path)


class Runner:
    """Runs the planned jobs; `run()` returns the jobs finished by the end."""

    def __init__(self, spec: StudySpec, echo: bool = True, poll_s: float = 0.5,
                 jobs: Optional[List[Job]] = None,
                 studies: Optional[Sequence[StudySpec]] = None) -> None:
        self.spec = spec
        self.echo = echo
        self.poll_s = poll_s
        # the studies whose runs `jobs` are (several schedules under spec.out_dir): each
        # keeps its study.json check, lock and log; default: spec's own
        self.studies = list(studies) if studies else [spec]
        for study in {spec.out_dir, *(s.out_dir for s in self.studies)}:
            os.makedirs(study, exist_ok=True)
        self.log_path = os.path.join(spec.out_dir, "study.log")
        self.log_paths = list(dict.fromkeys(
            [self.log_path, *(os.path.join(s.out_dir, "study.log") for s in self.studies)]))
        self.jobs = jobs if jobs is not None else plan(spec)
        names = [j.name for j in self.jobs]
        if len(set(names)) != len(names):  # the runner tracks its processes by name
            twice = sorted(n for n in set(names) if names.count(n) > 1)
            raise ValueError(f"two jobs share a name: {twice}")
        self._running: Dict[str, subprocess.Popen[bytes]] = {}
        self.failed: List[str] = []  # jobs that exited without their final metrics
        self._free_gpus: List[int] = list(spec.gpus or [])
        self._gpu_of: Dict[str, int] = {}

    def log(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        for path in self.log_paths:
            with open(path, "a") as f:
                f.write(line + "\n")
        if self.echo:
            print(line, flush=True)

    def _launch(self, job: Job) -> subprocess.Popen[bytes]:
        write_run_files(job, self.spec)
        threads = str(self.spec.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "DYNRCNN_STUDY_THREADS": threads}
        if self.spec.gpus is not None:  # one GPU per run: the worker sees only its own
            gpu = self._free_gpus.pop(0)
            self._gpu_of[job.name] = gpu
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        with open(os.path.join(job.run_dir, "train.log"), "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "dynrcnn.study.worker", job.run_dir],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)

    def _stop_all(self, signum: int, _frame: Any) -> None:
        for proc in self._running.values():
            proc.terminate()
        for proc in self._running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log(f"stopped by signal {signum}; rerun the same command to continue")
        raise SystemExit(128 + signum)

    def run(self) -> List[Job]:
        with contextlib.ExitStack() as locks:
            for study in dict.fromkeys([self.spec.out_dir,
                                        *(s.out_dir for s in self.studies)]):
                locks.enter_context(StudyLock(study))
            for study_spec in self.studies:
                check_same_study(study_spec)
            check_init_weights(self.jobs, self.spec)
            if self.spec.base is None:  # the user's data exists; the synthetic is made once
                ensure_study_data(self.spec, self.log)
            else:  # which splits and settings each run is evaluated at, before counting
                for job in self.jobs:
                    write_run_files(job, self.spec)
            old = {s: signal.signal(s, self._stop_all) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._run_all()
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)
        return [j for j in self.jobs if j.complete()]

    def _run_all(self) -> None:
        todo = [j for j in self.jobs if not j.complete()]
        total = len(self.jobs)
        # "to run" counts the runs that train (the report reads how they ran from it); runs
        # that only lack evaluations are counted apart
        to_train = sum(j.trains() for j in todo)
        settings = _INVOCATION_FORMAT.format(todo=to_train, jobs=self.spec.jobs,
                                             threads=self.spec.threads)
        evals = f", {len(todo) - to_train} to evaluate" if len(todo) > to_train else ""
        self.log(f"study in {self.spec.out_dir}: {total} runs, {total - len(todo)} finished "
                 f"earlier, {settings}{evals}")
        pending = list(todo)
        starts: Dict[str, float] = {}
        # durations of runs that trained and of runs that were only evaluated, apart: a
        # resumed study's first lines would otherwise promise minutes for hours of training
        trains: Dict[str, bool] = {}
        durations: Dict[bool, List[float]] = {True: [], False: []}
        jobs_by_name = {j.name: j for j in self.jobs}
        while pending or self._running:
            while pending and len(self._running) < self.spec.jobs:
                job = pending.pop(0)
                state = ("retraining" if job.finished() and job.trains() else
                         "evaluating" if job.finished() else
                         "resuming" if job.started() else "starting")
                trains[job.name] = job.trains()
                self._running[job.name] = self._launch(job)
                gpu = self._gpu_of.get(job.name)
                self.log(f"{state} {job.name} -> {job.run_dir}"
                         + (f" on GPU {gpu}" if gpu is not None else ""))
                starts[job.name] = time.perf_counter()
            time.sleep(self.poll_s)
            for name, proc in list(self._running.items()):
                if proc.poll() is None:
                    continue
                del self._running[name]
                if name in self._gpu_of:
                    self._free_gpus.append(self._gpu_of.pop(name))
                job = jobs_by_name[name]
                seconds = time.perf_counter() - starts[name]
                if proc.returncode == 0 and job.complete():
                    durations[trains[name]].append(seconds)
                    finished = sum(j.complete() for j in self.jobs)
                    self.log(f"done {name} in {seconds:.0f} s ({_metrics_text(job)}); "
                             f"{finished}/{total} finished"
                             f"{self._eta(pending, trains, durations)}")
                else:
                    self.failed.append(name)
                    self.log(f"FAILED {name} (exit {proc.returncode}): see "
                             f"{os.path.join(job.run_dir, 'train.log')}")
        self.log(f"study run over: {sum(j.complete() for j in self.jobs)}/{total} finished, "
                 f"{len(self.failed)} failed")

    def _eta(self, pending: Sequence[Job], trains: Dict[str, bool],
             durations: Dict[bool, List[float]]) -> str:
        """', about N min left': each run left (pending or running) costs the mean time of
        the finished runs of its kind (trained, or only evaluated); none before a run of
        each kind that is left has finished."""
        left = [j.trains() for j in pending] + [trains[name] for name in self._running]
        mean = {kind: sum(times) / len(times) for kind, times in durations.items() if times}
        if not left or any(kind not in mean for kind in left):
            return ""
        return f", about {sum(mean[kind] for kind in left) / self.spec.jobs / 60:.0f} min left"


# The runner's first line of each invocation in study.log ends with this; the report parses
# it back, so the line and its parser share one format and cannot drift apart.
_INVOCATION_FORMAT = "{todo} to run ({jobs} at a time, {threads} thread(s) each)"
_INVOCATION = re.compile(re.escape(_INVOCATION_FORMAT).replace(r"\{", "{").replace(r"\}", "}")
                         .format(todo=r"(\d+)", jobs=r"(\d+)", threads=r"(\d+)"))


def recorded_run_settings(out_dir: str) -> Optional[Dict[str, str]]:
    """'jobs' and 'threads' of the runner invocations that trained something, read from
    out_dir/study.log ("2", or "1 or 2" when they changed); None when it has none."""
    try:
        with open(os.path.join(out_dir, "study.log")) as f:
            found = [m.groups() for m in map(_INVOCATION.search, f) if m]
    except OSError:
        return None
    ran = [(int(jobs), int(threads)) for todo, jobs, threads in found if int(todo) > 0]
    if not ran:
        return None
    return {"jobs": " or ".join(str(j) for j in sorted({j for j, _ in ran})),
            "threads": " or ".join(str(t) for t in sorted({t for _, t in ran}))}


def _metrics_text(job: Job) -> str:
    with open(final_metrics_path(job.run_dir, job.config.iterations)) as f:
        data = json.load(f)
    bbox = data.get("bbox", data)
    return f"AP {100 * bbox['AP']:.1f}, AP90 {100 * bbox.get('AP90', float('nan')):.1f}"


def spec_dict(spec: StudySpec) -> Dict[str, Any]:
    return dataclasses.asdict(spec)
