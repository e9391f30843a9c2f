"""Reproducible, and traceable where it is not: a rerun of a study in the same environment makes the same trials,
decisions and accuracies whatever `resources.max_concurrent` is, and every study records the environment it ran in
(on the MLflow experiment and in the report). Real local Ray, real sqlite MLflow store, real shards."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study import environment
from study.config import StudySpec, load_study
from study.orchestrate.pipeline import run_study
from study.report.sections import _environment, _overlap_note, _ranking, inseparable_arms, overlap_groups
from study.report.tables import StudyResults
from study.tracking import ENVIRONMENT, StudyTracker


def write_study(folder: Path, teacher: Path, shards: Path, max_concurrent: int) -> Path:
    """One arm, two searched trials, ASHA at the second of four reports, a one-seed final phase.

    Seed 4 deals the arm a slow first trial (batch 4: 128 steps to the rung) and a fast second one (batch 256:
    2 steps). With two slots and an arm's trials allowed to overlap, both start together and the second reaches
    the rung first, so which trial ASHA stops would depend on `max_concurrent`.
    """
    spec = {
        "name": "repro",
        "seed": 4,
        "teacher": {"uri": str(teacher)},
        "student": {"arch": "resnet8"},
        "arms": [{"name": "digits", "card": "digits_train"}],
        "train": {"randaugment_ops": 0, "mixup": False, "temperature": 4.0},
        "search": {
            "trials_per_arm": 2,
            "space": {"batch_size": {"type": "choice", "values": [4, 256]}},
            "scheduler": {"kind": "asha", "grace_reports": 2, "reduction_factor": 2},
        },
        "final": {"top_k": 1, "seeds": 1},
        "budget": {"images": 1024, "report_every": 256, "eval_batch_size": 512},
        "criteria": {"images": 64},
        "resources": {"cpu": 1, "max_concurrent": max_concurrent},
        "storage": {"shards": str(shards), "tune": "tune"},
        "tracking": {"uri": "sqlite:///mlflow.db"},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trials_by_key(tracking_uri: str) -> dict[tuple[str, str, str], dict]:
    """Each trial keyed by what the study decided (arm, phase, seed), never by Tune's trial id or timing."""
    client = MlflowClient(tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("repro-")]
    out = {}
    for run in client.search_runs([experiment.experiment_id], "tags.`kd_study.role` = 'trial'", max_results=100):
        params = dict(run.data.params)
        key = (run.data.tags["kd_study.arm"], run.data.tags["phase"], params.pop("seed"))
        history = {
            m: [(h.step, h.value) for h in sorted(client.get_metric_history(run.info.run_id, m), key=lambda h: h.step)]
            for m in ("val_acc", "test_acc", "train_loss")
        }
        out[key] = {"params": params, "outcome": run.data.tags["kd_study.outcome"], "history": history}
    return out


@pytest.mark.slow
def test_a_rerun_with_one_or_two_concurrent_trials_makes_the_same_trials_decisions_and_accuracies(
    ray_session, digits_teacher: Path, tmp_path: Path
) -> None:
    shards = tmp_path / "shards"  # built by the first run, reused by the second (trials read them the same way)
    results = {}
    for slots in (1, 2):
        folder = tmp_path / f"slots{slots}"
        folder.mkdir()
        path = write_study(folder, digits_teacher, shards, slots)
        outcome = run_study(load_study(path), str(folder), spec_path=str(path))
        assert outcome.failed == 0
        results[slots] = (trials_by_key(outcome.paths.tracking_uri), outcome.report.ranking, outcome)

    one, two = results[1][0], results[2][0]
    assert len(one) == 2 + 1
    stopped = [k for k, t in one.items() if t["outcome"] == "early_stopped"]
    assert stopped, "ASHA stopped nothing: the test would not see a decision flip"
    assert sorted(one) == sorted(two)
    for key in one:
        assert one[key] == two[key], key  # config, outcome and every reported value, to the last bit
    columns = ["arm", "test_acc"]
    pd.testing.assert_frame_equal(results[1][1][columns], results[2][1][columns])

    # the environment is on the experiment, on every trial run and in the report
    outcome = results[2][2]
    client = MlflowClient(outcome.paths.tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("repro-")]
    recorded = {k: json.loads(v) for k, v in experiment.tags.items() if k.startswith(ENVIRONMENT + ".")}
    assert len(recorded) == 1
    (env_id,) = (k.rsplit(".", 1)[1] for k in recorded)
    (env,) = recorded.values()
    assert env["torch"]["build"] == __import__("torch").__version__ and env["cpu"]["torch_capability"]
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    runs = client.search_runs([experiment.experiment_id], "tags.`kd_study.role` = 'trial'", max_results=100)
    assert {r.data.tags.get(ENVIRONMENT) for r in runs} == {env_id}
    report = (Path(outcome.paths.report_dir) / "report.md").read_text()
    assert "## Environment" in report and env["packages"]["torch"] in report and env_id in report

    # a study resumed elsewhere keeps both environments, and the report marks what differs (same store: a fresh
    # sqlite store costs its schema migrations)
    other = StudyTracker(
        outcome.paths.tracking_uri,
        StudySpec.model_validate({"name": "env", "arms": [{"name": "a", "card": "digits_train"}]}),
    )
    other.record_environment(env_id, env)
    other.record_environment(env_id, env)  # a rerun in the same environment adds nothing
    assert list(other.environments()) == [env_id]
    there = json.loads(json.dumps(env))
    there["cpu"]["torch_capability"] = "elsewhere"
    other.record_environment(environment.fingerprint(there), there)
    envs = other.environments()
    assert len(envs) == 2 and {e["cpu"]["torch_capability"] for e in envs.values()} == {
        "elsewhere",
        env["cpu"]["torch_capability"],
    }
    results = StudyResults("env", "", "{}", None, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                           pd.DataFrame(), environments=envs)  # fmt: skip
    section = _environment(results, {})
    table = next(b for b in section.blocks if hasattr(b, "frame")).frame.set_index("field")
    assert table.loc["cpu.torch_capability", "differs"] == "≠" and table.loc["packages.torch", "differs"] == ""
    assert any("2 environments" in getattr(b, "text", "") for b in section.blocks)


# ------------------------------------------------------------------------------------------------ environment
def test_git_state_is_none_outside_a_checkout_and_names_the_commit_inside_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(environment, "CHECKOUT", tmp_path)
    assert environment.git_state() is None  # an installed wheel: no failure, no commit
    monkeypatch.setattr(environment, "CHECKOUT", Path(environment.__file__).resolve().parents[1])
    state = environment.git_state()
    if (Path(environment.__file__).resolve().parents[1] / ".git").exists():
        assert state is not None and len(state["commit"]) == 40 and isinstance(state["dirty"], bool)


def test_cpu_flags_come_from_cpuinfo_and_say_which_vector_units_exist() -> None:
    text = "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\n"
    info = environment.cpu_info(text)
    assert info["model"] == "Test CPU 9000"
    assert info["flags"]["avx2"] and not info["flags"]["avx512f"]
    assert info["torch_capability"] in {"AVX512", "AVX2", "DEFAULT", "NO AVX", "ZVECTOR", "VSX", "SVE256"}


# ------------------------------------------------------------------------------------------------ ranking
def ranking(rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    extra = {"basis": "final", "best_val_acc": math.nan}
    return pd.DataFrame(
        [{"arm": a, "surrogate": a, "test_acc": m, "ci_low": lo, "ci_high": hi, **extra} for a, m, lo, hi in rows]
    )


def test_overlapping_intervals_are_named_as_arms_that_cannot_be_told_apart() -> None:
    frame = ranking([("digits", 0.96, 0.95, 0.97), ("crops", 0.43, 0.09, 0.76), ("leaves", 0.28, 0.2, 0.35),
                     ("noise", 0.13, 0.12, 0.14)])  # fmt: skip
    assert inseparable_arms(frame) == [("crops", "leaves"), ("crops", "noise")]
    assert inseparable_arms(ranking([("a", 0.9, 0.8, 1.0), ("b", 0.5, 0.4, 0.6)])) == []
    no_interval = ranking([("a", 0.9, math.nan, math.nan), ("b", 0.5, 0.4, 0.6)])
    assert inseparable_arms(no_interval) == []
    # several teachers: only one teacher's arms are paired (crops@a overlaps leaves@b, a pair across teachers)
    teachers = {"crops": "a", "leaves": "b", "noise": "a"}
    assert inseparable_arms(frame, teachers) == [("crops", "noise")]

    trials = pd.DataFrame({"test_acc": [0.5], "status": ["FINISHED"]})
    results = StudyResults("r", "", "{}", None, trials, pd.DataFrame(), frame, pd.DataFrame(), pd.DataFrame())
    text = " ".join(getattr(b, "text", "") for b in _ranking(results, {}).blocks)
    assert "cannot be told apart" in text and "crops and leaves" in text


def test_a_long_overlap_list_is_shown_as_groups_of_arms_that_share_a_point() -> None:
    # a chain: each arm overlaps only its neighbours, so the groups are the neighbouring pairs
    chain = ranking([(a, 0.9 - 0.1 * i, 0.84 - 0.1 * i, 0.96 - 0.1 * i) for i, a in enumerate("abcd")])
    assert overlap_groups(chain) == [["a", "b"], ["b", "c"], ["c", "d"]]
    # sixteen arms at chance (a tiny study): 120 pairs, one group, no pair list
    same = ranking([(f"arm{i:02d}", 0.1, 0.1, 0.1) for i in range(16)])
    assert overlap_groups(same) == [[f"arm{i:02d}" for i in range(16)]]
    text = _overlap_note(same, same).text
    assert "120 pairs of arms overlap" in text and "(16 arms)" in text and " and arm01" not in text
    # two teachers: groups never mix them
    assert overlap_groups(same, {f"arm{i:02d}": "ab"[i % 2] for i in range(16)}) == [
        [f"arm{i:02d}" for i in range(0, 16, 2)], [f"arm{i:02d}" for i in range(1, 16, 2)]
    ]  # fmt: skip


def test_overlap_groups_are_the_maximal_sets_of_mutually_overlapping_arms() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        lo = rng.uniform(0, 1, 8).round(1)  # rounded: shared end points, the closed-interval edge case
        hi = lo + rng.uniform(0, 0.4, 8).round(1)
        frame = ranking([(f"r{i}", (lo[i] + hi[i]) / 2, lo[i], hi[i]) for i in range(8)])
        pairs = set(inseparable_arms(frame))
        subsets = [[f"r{i}" for i in range(8) if mask >> i & 1] for mask in range(1, 256)]
        cliques = [
            s for s in subsets if len(s) > 1 and all((a, b) in pairs for i, a in enumerate(s) for b in s[i + 1 :])
        ]
        maximal = [c for c in cliques if not any(set(c) < set(d) for d in cliques)]
        assert sorted(overlap_groups(frame)) == sorted(maximal)
