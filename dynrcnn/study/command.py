"""`dynrcnn study`: the seeded paired study on the user's COCO-format data.

The command line (dynrcnn.cli) parses; this module checks the input, builds the StudySpec
(every `dynrcnn train` flag given is the common configuration of all runs), then either
runs the study (dynrcnn.study.runner: resumable, one run per GPU or `--jobs` on the CPU),
prints one `dynrcnn train` command per pending run (`--plan`, for a cluster scheduler), or
only reports (`--report`: evaluates what the finished runs still lack, then writes
`report.md`, `report.json` and the PNGs into the study directory).

Every arm trains in the paper's RPN setting (1000 proposals after NMS 0.85). With
`--best-vs-best` every arm also trains at NMS 0.7 (runs under nms070/), every run is tested
in both settings, and the report adds the user's comparison (dynrcnn.study.choice): each
arm at the (training, test) setting of its best mean val AP, compared on test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import UsageError
from dynrcnn.study.arms import BASELINE, MASK_BASELINE, PAPER_MODEL, select_arms
from dynrcnn.study.runner import Job, Runner, StudySpec, plan
from dynrcnn.study.settings import (
    BEST_VS_BEST_SETTINGS,
    OWN,
    SETTING_TEXT,
    metrics_path,
    pending_evals,
)
from dynrcnn.study.stats import COLUMNS, SEGM_COLUMNS, paired_difference, verdict

DEFAULT_ARMS = ("baseline", "dla_dsl", "t060")
REPORT_COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90")
MASK_ARCHS = ("mask_rcnn", "dynamic_mask_rcnn")
NMS070_DIR = "nms070"  # --best-vs-best: the runs trained at RPN NMS 0.7, under the study
DATA_FIELDS = ("data_dir", "train_images", "train_ann", "val_images", "val_ann")
PATH_FIELDS = DATA_FIELDS + ("weights", "backbone_weights")  # made absolute in job.json
# TrainConfig fields a study sets per run: given as flags they would be silently replaced
PER_RUN = {"arch": "--arms (each arm is a detector)", "seed": "--seeds N (seeds 0..N-1)",
           "resume": "nothing (a study always continues where it stopped)",
           "overwrite": "another --out-dir (a study never deletes finished runs)"}


@dataclass
class StudyRequest:
    """What the user asked for: the study directory, arms, seeds, the common TrainConfig
    fields (`base`, as given), an optional test split, and how to run."""

    out_dir: str
    base: Dict[str, Any]
    arms: Sequence[str] = DEFAULT_ARMS
    seeds: int = 3
    test_images: Optional[str] = None
    test_ann: Optional[str] = None
    jobs: Optional[int] = None
    threads: Optional[int] = None
    gpus: Optional[str] = None
    command: str = "dynrcnn study"
    best_vs_best: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)
    # several --iterations: the study at each schedule, in out_dir/iters_N/ (schedules.py)
    schedules: Optional[List[int]] = None


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpus(text: Optional[str], count: int) -> Optional[List[int]]:
    """--gpus '0,1' -> [0, 1]; None: every visible GPU, or None (the CPU) when there is none."""
    if text is None:
        return list(range(count)) if count else None
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--gpus {text}: expected GPU indices like 0,1,2") from None
    absent = [g for g in gpus if not 0 <= g < count]
    if not gpus or absent:
        seen = f"GPUs 0-{count - 1} are visible" if count else "no GPU is visible"
        raise UsageError(f"--gpus {text}: {seen} here")
    if len(set(gpus)) != len(gpus):
        raise UsageError(f"--gpus {text}: a GPU is named twice")
    return gpus


def _check_images(flag: str, images: Optional[str], ann: str) -> None:
    """UsageError naming `flag` unless every image `ann` lists is a file under `images`."""
    import json

    if not images or not os.path.isdir(images):
        raise UsageError(f"{flag}: no image folder {images}")
    try:
        with open(ann) as f:
            entries = json.load(f).get("images", [])
        names = [e.get("file_name") for e in entries if isinstance(e, dict)]
    except (OSError, ValueError, AttributeError):
        return  # a broken annotation file: the data set's own checks name it
    missing = [n for n in names
               if not isinstance(n, str) or not os.path.isfile(os.path.join(images, n))]
    if missing:
        raise UsageError(f"{flag} {images}: {len(missing)} of the {len(names)} images "
                         f"{ann} lists are not there (first: {missing[0]})")


def check_data(base: Dict[str, Any], test_images: Optional[str], test_ann: Optional[str],
               archs: Sequence[str]) -> Dict[str, Optional[str]]:
    """The study's splits {train, val, test} as annotation files, checked: train and val
    must exist, test is optional (both its flags or neither), a mask arm needs masks."""
    from dynrcnn.engine.config import resolve_data_paths

    data_dir = base.get("data_dir")
    paths = resolve_data_paths(data_dir, {k: base.get(k) for k in (
        "train_images", "train_ann", "val_images", "val_ann")})
    for split in ("train", "val"):
        ann = paths[f"{split}_ann"]
        if not ann:
            raise UsageError(f"--{split}-ann: a study needs a {split} split (--data-dir, or "
                             f"--{split}-images and --{split}-ann)")
        if not os.path.isfile(ann):
            flag = "--data-dir" if data_dir and not base.get(f"{split}_ann") else \
                f"--{split}-ann"
            raise UsageError(f"{flag}: no {split} annotation file {ann}")
    if (test_images is None) != (test_ann is None):
        raise UsageError("--test-images and --test-ann go together: give both or neither")
    if test_ann is None and data_dir:  # make_synthetic_coco's layout may hold a test split
        candidate = os.path.join(data_dir, "annotations", "instances_test.json")
        if os.path.isfile(candidate):
            test_images, test_ann = os.path.join(data_dir, "test"), candidate
    if test_ann is not None and not os.path.isfile(test_ann):
        raise UsageError(f"--test-ann: no file {test_ann}")
    # Images too, before any run trains: a wrong folder would fail every run at its end.
    for split in ("train", "val"):
        flag = f"--{split}-images" if base.get(f"{split}_images") else "--data-dir"
        _check_images(flag, paths[f"{split}_images"], paths[f"{split}_ann"])
    if test_ann is not None:
        _check_images("--test-images", test_images, test_ann)
    if any(a in MASK_ARCHS for a in archs) and not _has_masks(paths["train_ann"]):
        raise UsageError(f"--arms: a mask arm needs segmentation masks, and "
                         f"{paths['train_ann']} has none")
    return {"train": paths["train_ann"], "val": paths["val_ann"], "test": test_ann,
            "test_images": test_images}


def _has_masks(ann: str) -> bool:
    with open(ann) as f:
        annotations = json.load(f).get("annotations", [])
    return any(a.get("segmentation") for a in annotations)


def build_spec(req: StudyRequest, gpu_count: Optional[int] = None) -> StudySpec:
    """The StudySpec of a request, every input checked (UsageError naming the flag)."""
    if req.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {req.seeds}")
    for name, hint in PER_RUN.items():
        if name in req.base:
            raise UsageError(f"--{name}: a study sets it for each run; use {hint}")
    try:
        arms = select_arms(req.arms)
    except ValueError as exc:
        raise UsageError(f"--arms: {exc}") from None
    data = check_data(req.base, req.test_images, req.test_ann, [a.arch for a in arms])
    for key in ("weights", "backbone_weights"):  # else every run fails at its start
        path = req.base.get(key)
        if path and not os.path.isfile(path):
            raise UsageError(f"--{key.replace('_', '-')}: no file {path}")
    count = visible_gpus() if gpu_count is None else gpu_count
    gpus = parse_gpus(req.gpus, count)
    if gpus is not None and req.jobs is not None and req.jobs != len(gpus):
        raise UsageError(f"--jobs {req.jobs}: with GPUs a study runs one run per GPU "
                         f"({len(gpus)}); choose them with --gpus")
    if req.jobs is not None and req.jobs < 1:  # 0 is not "default": say so, as for -1
        raise UsageError(f"--jobs must be >= 1, got {req.jobs}")
    jobs = len(gpus) if gpus else (req.jobs or 1)
    threads = req.threads or max(1, (os.cpu_count() or 1) // jobs)
    # absolute paths: a run is the same wherever its worker (or a cluster job) starts
    base = {k: (os.path.abspath(v) if k in PATH_FIELDS and v else v)
            for k, v in req.base.items() if k != "init_weights"}
    from dynrcnn.engine.config import TrainConfig

    if req.best_vs_best:
        _check_best_vs_best(base, data["test"])
    test_images, test_ann = (os.path.abspath(p) if p else None
                             for p in (data["test_images"], data["test"]))
    return StudySpec(out_dir=os.path.abspath(req.out_dir), data_dir=base.get("data_dir") or "",
                     arms=[a.name for a in arms],
                     iterations=int(base.get("iterations", TrainConfig.iterations)),
                     interval=int(base.get("dynamic", {}).get("interval", 100)),
                     core_seeds=req.seeds, other_seeds=req.seeds, jobs=jobs, threads=threads,
                     protocol="paper", init_weights=_abs(req.base.get("init_weights")), base=base,
                     test_images=test_images, test_ann=test_ann, gpus=gpus,
                     test_settings=list(BEST_VS_BEST_SETTINGS) if req.best_vs_best else None)


def _check_best_vs_best(base: Dict[str, Any], test_ann: Optional[str]) -> None:
    if test_ann is None:
        raise UsageError("--best-vs-best chooses each arm's setting on val and reports it on "
                         "test: give --test-images and --test-ann")
    rpn = sorted(set(base.get("model_kwargs", {})) & set(PAPER_MODEL))
    if rpn:
        raise UsageError(f"--model-kwargs: --best-vs-best sets the RPN of each candidate; "
                         f"leave out {', '.join(rpn)}")


def study_jobs(spec: StudySpec) -> Tuple[List[Job], List[Job]]:
    """(the runs in the paper's setting, every run): with --best-vs-best the second list
    adds each arm's runs at NMS 0.7, in out_dir/nms070/."""
    jobs = plan(spec)
    if not spec.test_settings:
        return jobs, jobs
    other = dataclasses.replace(spec, protocol="paper_nms070",
                                out_dir=os.path.join(spec.out_dir, NMS070_DIR))
    return jobs, jobs + [dataclasses.replace(j, tag="NMS 0.7") for j in plan(other)]


def plan_commands(jobs: Sequence[Job], spec: StudySpec) -> List[str]:
    """One `dynrcnn train` command per run that still has to train (its job.json and
    study_run.json written first), for a cluster scheduler to run."""
    from dynrcnn.study.user import write_run_files

    lines = []
    for job in jobs:
        write_run_files(job, spec)
        if job.trains():
            config = os.path.join(job.run_dir, "job.json")
            lines.append(f"dynrcnn train --config {shlex.quote(config)} --resume")
    return lines


def evaluate_finished(jobs: Sequence[Job], log: Callable[[str], None]) -> None:
    """The held-out evaluations finished runs still lack (runs trained by `--plan`'s
    commands evaluate only their val split), done here before the report."""
    from dynrcnn.study.settings import evaluate_setting

    for job in jobs:
        if not job.finished() or not os.path.isfile(os.path.join(job.run_dir,
                                                                 "model_final.pth")):
            continue
        for split, setting in pending_evals(job.run_dir, job.config):
            log(f"evaluating {job.name} on {split}")
            evaluate_setting(job.run_dir, job.config, split, setting)


def report(jobs: Sequence[Job], spec: StudySpec, command: str) -> str:
    """report.md / report.json / PNGs of the finished runs, on the test split when the study
    has one (else val); returns the Markdown."""
    from dynrcnn.study.report import report_study

    split = "test" if spec.test_ann else "val"
    masks = any(j.arm.arch in MASK_ARCHS for j in jobs)
    info = {**spec_info(spec), "split": split,
            "images": count_images(spec.test_ann if split == "test" else
                                    jobs[0].config.data_paths()["val_ann"])}
    path = os.path.join(spec.out_dir, "report.md")
    text = report_study(jobs, path, info, command,
                        columns=REPORT_COLUMNS + (SEGM_COLUMNS if masks else ()),
                        metrics_of=lambda j: metrics_path(j.run_dir, j.config, split, OWN))
    text = _add_best_fixed(jobs, split, info["images"], path)
    if spec.test_settings:
        text = _add_best_vs_best(spec, [j.arm.name for j in jobs], path, info["images"])
    return text


def _add_best_fixed(jobs: Sequence[Job], split: str, images: int, path: str) -> str:
    """Appends "Against the best fixed threshold" (dynrcnn.study.comparator) to report.md
    and report.json when the study has two fixed-T arms of one detector."""
    from dynrcnn.study.comparator import best_fixed_section, best_fixed_summary, collect_runs

    runs = collect_runs([j for j in jobs if j.finished()],
                        lambda j, s: metrics_path(j.run_dir, j.config, s, OWN),
                        tuple(dict.fromkeys(("val", split))))
    columns = REPORT_COLUMNS + (SEGM_COLUMNS if any(j.arm.arch in MASK_ARCHS for j in jobs)
                                else ())
    lines = best_fixed_section(runs, split, images, columns)
    with open(path) as f:
        text = f.read()
    if not lines:
        return text
    text = _insert_before_figures(text, lines)
    atomic_write_text(text, path)
    json_path = os.path.splitext(path)[0] + ".json"
    with open(json_path) as f:
        data = json.load(f)
    data["best_fixed"] = best_fixed_summary(runs, split, columns)
    atomic_write_text(json.dumps(data, indent=1), json_path)
    return text


def _insert_before_figures(text: str, lines: Sequence[str]) -> str:
    """The section right after the verdict (before the Figure-1 diagnostics), else at the
    end."""
    marker = "\n## Figure-1 diagnostics"
    block = "\n".join(lines).rstrip("\n") + "\n"
    if marker in text:
        head, tail = text.split(marker, 1)
        return head.rstrip("\n") + "\n\n" + block + marker + tail
    return text.rstrip("\n") + "\n\n" + block


def _add_best_vs_best(spec: StudySpec, arm_names: Sequence[str], path: str,
                      images: int) -> str:
    """Appends the best-against-best section to report.md and report.json."""
    from dynrcnn.study.choice import choice_report, choose, collect

    arms = list(dict.fromkeys(arm_names))
    reference = MASK_BASELINE if MASK_BASELINE in arms else BASELINE
    settings = " and ".join(SETTING_TEXT[s] for s in BEST_VS_BEST_SETTINGS)
    lines = ["", "## Best against best", "",
             f"Every arm was also trained at NMS 0.7 (runs in {NMS070_DIR}/), and every run "
             f"was tested at {settings}: four candidates per arm. Each arm takes the candidate "
             "of its best mean val AP (box AP); the chosen ones are compared on test, paired "
             "by seed, by the rules of the verdict above.", ""]
    summary: Dict[str, Any] = {"reference": reference}
    try:
        choice = choose(collect([spec.out_dir, os.path.join(spec.out_dir, NMS070_DIR)],
                                arms, BEST_VS_BEST_SETTINGS), arms)
    except ValueError as exc:
        lines.append(f"Not yet: {exc}.")
        choice = None
    if choice is not None and reference in choice.chosen:
        lines.append(choice_report(choice, references=[reference]).rstrip())
        ref = choice.chosen[reference]
        summary.update(seeds=choice.seeds, chosen={a: c.label for a, c in choice.chosen.items()},
                       differences={})
        lines.append("")
        where = f"{images} test images"
        for arm, cand in choice.chosen.items():
            if arm == reference:
                continue
            diffs = {col: paired_difference(
                {s: cand.metrics["test"][s][col] for s in choice.seeds},
                {s: ref.metrics["test"][s][col] for s in choice.seeds}) for col in COLUMNS}
            summary["differences"][arm] = {col: dataclasses.asdict(d) for col, d in
                                           diffs.items() if d is not None}
            name = f"{arm} - {reference} (best against best)"
            lines += [f"- {verdict(name, col, diffs[col], where)}" for col in ("AP", "AP90")]
    with open(path) as f:
        text = f.read().rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    atomic_write_text(text, path)
    json_path = os.path.splitext(path)[0] + ".json"
    with open(json_path) as f:
        data = json.load(f)
    data["best_vs_best"] = summary
    atomic_write_text(json.dumps(data, indent=1), json_path)
    return text


def spec_info(spec: StudySpec) -> Dict[str, Any]:
    """What the report's header and report.json say about the study."""
    import dataclasses

    from dynrcnn.engine.config import resolve_data_paths

    base = spec.base or {}
    paths = resolve_data_paths(base.get("data_dir"), {"train_ann": base.get("train_ann"),
                                                      "val_ann": base.get("val_ann")})
    model = {**PAPER_MODEL, **base.get("model_kwargs", {})}
    return {**dataclasses.asdict(spec),
            "data": {"train": paths["train_ann"], "val": paths["val_ann"],
                     "test": spec.test_ann or "none"},
            "rpn": f"{model}; KI 75 / Kbeta 10 (the paper's) for the dynamic arms; arms "
                   "differ only in their RoI heads" + (
                       f"; with --best-vs-best also rpn_nms_thresh 0.7 ({NMS070_DIR}/, see "
                       "Best against best)" if spec.test_settings else "")}


def common_config(given: Dict[str, Any], config_file: Optional[str],
                  echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """The common TrainConfig fields: the flags given over a --config file's fields. A
    file saved by `dynrcnn train` names its arch, seed and out_dir: the study sets those
    per run, so they are dropped from the file, and a line says so."""
    from dynrcnn.engine.config import TrainConfig, read_config_file

    base = read_config_file(TrainConfig, config_file) if config_file else {}
    dropped = [k for k in ("arch", "seed", "out_dir") if k in base and k not in given]
    for key in dropped:
        base.pop(key)
    if dropped:
        echo(f"--config {config_file}: {', '.join(dropped)} not used (the study sets them "
             "per run)")
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key == "dynamic":
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def count_images(ann: Optional[str]) -> int:
    if not ann:
        return 0
    with open(ann) as f:
        return len(json.load(f).get("images", []))


def run(req: StudyRequest, mode: str = "run", echo: Callable[[str], None] = print) -> int:
    """The command: mode "run" (train what is pending, then report), "plan" (print the
    commands) or "report" (no training). Returns the exit status. A request with several
    schedules is dynrcnn.study.schedules.run_schedules' (the layer above this one)."""
    if req.schedules is not None:
        raise ValueError("a request with several schedules goes to "
                         "dynrcnn.study.schedules.run_schedules")
    spec = build_spec(req)
    jobs, every = study_jobs(spec)
    if mode == "plan":
        os.makedirs(spec.out_dir, exist_ok=True)
        return print_plan(plan_commands(every, spec), len(every), req.command, echo)
    failed: List[str] = []
    if mode == "run":
        runner = Runner(spec, jobs=every)
        runner.run()
        failed = runner.failed
    else:
        evaluate_finished(every, echo)
    text = report(jobs, spec, req.command)
    verdicts = text[text.index("## Verdict"):].split("\n## ")[0] if "## Verdict" in text \
        else "no finished pair of runs yet"
    echo(verdicts.rstrip())
    for title in ("## Against the best fixed threshold", "## Best against best"):
        if title in text:  # its verdict lines (its tables are in the report)
            section = text[text.index(title):].split("\n## ")[0]
            echo("\n".join(line for line in section.splitlines()
                           if line.startswith(("- ", "Not yet", "best fixed T"))))
    return report_written(spec.out_dir, failed, echo)


def report_written(out_dir: str, failed: Sequence[str], echo: Callable[[str], None]) -> int:
    """The last lines of a study: where the report is, which runs failed; the exit status."""
    echo(f"report written to {os.path.join(out_dir, 'report.md')}")
    if failed:
        echo(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their train.log)")
        return 1
    return 0


def print_plan(lines: Sequence[str], total: int, command: str,
               echo: Callable[[str], None]) -> int:
    """--plan's output: the commands, then how many and the report command to run after."""
    for line in lines:
        echo(line)
    # the command as typed, --plan swapped for --report (argparse refuses both at once)
    then = shlex.join([t for t in shlex.split(command) if t != "--plan"] + ["--report"])
    echo(f"# {len(lines)} of {total} runs to train; then: {then}")
    return 0


def _abs(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path else None


__all__ = ["COLUMNS", "DEFAULT_ARMS", "StudyRequest", "build_spec", "run"]
