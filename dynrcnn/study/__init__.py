"""The accuracy study of issue 9: the paper's ablations at small scale, with seeds and
confidence intervals.

- `arms`: the named arms (Tables 1, 3, 4, 5, Cascade R-CNN, controls) and their seeds;
- `runner`: (arm, seed) jobs as resumable training run directories, one thread each, at
  most two side by side (`Runner`, `StudySpec`, `quick_spec`);
- `worker`: one job in its own process;
- `stats`: mean ± sd, paired differences with 95% t-intervals, the schedule rule;
- `report`: Markdown tables, Figure-1 diagnostics, the AP-vs-IoU plot with error bars;
- `curve`: the learning curve that picks the schedule.

The face is `benchmarks/experiment.py`.
"""

from dynrcnn.study.arms import ARMS, BASELINE, CORE, TABLES, Arm, select_arms
from dynrcnn.study.runner import Job, Runner, StudySpec, plan, quick_spec
from dynrcnn.study.stats import paired_difference, pick_schedule, summarize

__all__ = ["ARMS", "BASELINE", "CORE", "TABLES", "Arm", "Job", "Runner", "StudySpec",
           "paired_difference", "pick_schedule", "plan", "quick_spec", "select_arms",
           "summarize"]
