"""Seeded paired studies: arms x seeds as independent training runs, paired differences
with 95% intervals, and a report (the project's synthetic studies and `dynrcnn study` on a
user's data).

- `arms`: the named arms (Tables 1, 3, 4, 5, Cascade R-CNN, controls) and their seeds;
- `runner`: (arm, seed) jobs as resumable training run directories, `jobs` side by side
  on the CPU or one per GPU (`Runner`, `StudySpec`, `quick_spec`);
- `user`, `command`: the runs of a study on the user's data and the `dynrcnn study`
  command's logic (checks, `--plan`, `--report`);
- `worker`: one job in its own process;
- `stats`: mean ± sd, paired differences with 95% t-intervals, the schedule rule;
- `report`: Markdown tables, Figure-1 diagnostics, the AP-vs-IoU plot with error bars;
- `curve`: the learning curve that picks the schedule.

The faces are `dynrcnn study` and `benchmarks/experiment.py`.
"""

from dynrcnn.study.arms import ARMS, BASELINE, CORE, TABLES, Arm, select_arms
from dynrcnn.study.runner import Job, Runner, StudySpec, plan, quick_spec
from dynrcnn.study.stats import paired_difference, pick_schedule, summarize

__all__ = ["ARMS", "BASELINE", "CORE", "TABLES", "Arm", "Job", "Runner", "StudySpec",
           "paired_difference", "pick_schedule", "plan", "quick_spec", "select_arms",
           "summarize"]
