"""How well data-free search (`search.metric: agreement`) picks the configs a labelled search (`val_acc`) picks.

One study, run with `search.metric: agreement` on a teacher that does have eval data, so every trial reports both
`agreement` (student-teacher agreement on the arm's held-out surrogate images) and `val_acc`. ASHA is off, so
every trial trains its whole budget and the two metrics compare the same students.

Window: each trial's whole budget (ASHA off); test accuracy at its last step (not a timing).
Baseline: the trial a labelled search (`val_acc`) would pick among the same trials of the same run.

One line per arm, `agreement_vs_val_<arm>: ratio=X` with X = test accuracy of the trial agreement picks / test
accuracy of the trial val_acc picks (1: data-free search picks as well as a labelled one), then the Spearman rank
correlation of the two metrics over the arm's trials and the raw accuracies.

    python benchmarks/agreement_vs_val.py [--trials 8 --images 2048 --arms digits_train,dead_leaves --out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from study.config import StudySpec
from study.orchestrate.pipeline import run_study


def study_spec(root: str, trials: int, images: int, arms: list[str]) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "agreement-vs-val",
            "teacher": {"arch": "resnet8", "epochs": 8, "batch_size": 64, "train": True},
            "student": {"arch": "resnet8"},
            "arms": [{"name": arm, "card": arm} for arm in arms],
            "train": {"batch_size": 32, "randaugment_ops": 0, "crop_scale_min": 0.8, "mixup": False},
            "search": {
                "trials_per_arm": trials,
                "metric": "agreement",
                "agreement_images": 256,
                "scheduler": {"kind": "none"},
                "space": {
                    "lr": {"type": "loguniform", "low": 0.003, "high": 0.5},
                    "temperature": {"type": "uniform", "low": 1.0, "high": 8.0},
                },
            },
            "budget": {"images": images, "report_every": images},
            "resources": {"cpu": 1, "max_concurrent": 2},
            "storage": {"root": root},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--out", type=str, default=None)
    parser.add_argument("--arms", type=str, default="digits_train,dead_leaves", help="bundled cards, one arm each")
    args = parser.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="kd-agreement-")
    start = time.perf_counter()
    outcome = run_study(
        study_spec(str(Path(root).resolve()), args.trials, args.images, args.arms.split(",")), str(Path(root).resolve())
    )
    trials = pd.read_parquet(outcome.report.parquet)
    trials = trials[trials["status"] == "FINISHED"]
    seconds = time.perf_counter() - start
    for arm, group in trials.groupby("arm"):
        rho = group["agreement"].corr(group["val_acc"], method="spearman")
        by_agreement = group.loc[group["agreement"].idxmax()]
        by_val = group.loc[group["val_acc"].idxmax()]
        print(
            f"agreement_vs_val_{arm}: ratio={by_agreement['test_acc'] / by_val['test_acc']:.3f} "
            f"spearman={rho:.2f} trials={len(group)} test_acc_of_pick agreement={by_agreement['test_acc']:.4f} "
            f"val={by_val['test_acc']:.4f} same_pick={by_agreement['trial_id'] == by_val['trial_id']} "
            f"study={seconds:.0f} s dir={root}"
        )


if __name__ == "__main__":
    main()
