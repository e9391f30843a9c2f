"""Per-arm search and early stopping: equal trials per arm, one seeded Optuna study and one set of ASHA rungs each,
state that survives a save/restore, diverged trials scored 0, failed ones ignored by TPE."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from study.config import FinalSpec, ParamSpace, StudySpec
from study.orchestrate.sweep import ArmRungs, PerArmASHA, PerArmSearch, fixed_budget_images

SPACE = {
    "lr": ParamSpace(type="loguniform", low=0.01, high=0.3),
    "temperature": ParamSpace(type="choice", values=[2, 4, 8]),
}


def deal(searcher: PerArmSearch, n: int, start: int = 0) -> list[dict]:
    return [searcher.suggest(f"t{i}") for i in range(start, start + n)]


class TestPerArmSearch:
    def test_trials_are_dealt_equally_to_arms_then_the_search_finishes(self) -> None:
        searcher = PerArmSearch(["a", "b", "c"], SPACE, trials_per_arm=2, seed=0)
        configs = deal(searcher, 6)
        assert [c["arm"] for c in configs] == ["a", "b", "c", "a", "b", "c"]
        assert searcher.suggest("t6") == Searcher.FINISHED
        assert all(0.01 <= c["lr"] <= 0.3 and c["temperature"] in (2, 4, 8) for c in configs)
        assert all(c["phase"] == "search" for c in configs) and len({c["seed"] for c in configs}) == 6

    def test_same_seed_gives_the_same_suggestions_and_arms_search_independently(self) -> None:
        first = deal(PerArmSearch(["a", "b"], SPACE, 3, seed=7), 6)
        second = deal(PerArmSearch(["a", "b"], SPACE, 3, seed=7), 6)
        assert first == second
        a = [c["lr"] for c in first if c["arm"] == "a"]
        b = [c["lr"] for c in first if c["arm"] == "b"]
        assert a != b

    def test_results_go_to_the_arm_that_ran_the_trial(self) -> None:
        searcher = PerArmSearch(["a", "b"], SPACE, 2, seed=0)
        deal(searcher, 2)
        searcher.on_trial_complete("t0", {"val_acc": 0.9, "lr": 0.1})
        assert searcher.finished_values("a") == [0.9] and searcher.finished_values("b") == []

    def test_a_diverged_trial_is_a_complete_result_of_zero_and_a_failed_one_is_ignored(self) -> None:
        searcher = PerArmSearch(["a"], SPACE, 3, seed=0)
        deal(searcher, 3)
        searcher.on_trial_complete("t0", {"val_acc": 0.0, "diverged": 1.0})
        searcher.on_trial_complete("t1", None, error=True)
        searcher.on_trial_complete("t2", {"val_acc": 0.5})
        states = [t.state.name for t in searcher.studies["a"].trials]
        assert states == ["COMPLETE", "FAIL", "COMPLETE"]
        assert searcher.finished_values("a") == [0.0, 0.5]

    def test_a_restored_searcher_suggests_what_an_uninterrupted_one_would(self, tmp_path: Path) -> None:
        whole = PerArmSearch(["a", "b"], SPACE, 4, seed=3)
        first_half = deal(whole, 4)
        for i, value in enumerate([0.2, 0.4, 0.6, 0.1]):
            whole.on_trial_complete(f"t{i}", {"val_acc": value})
        whole.save(str(tmp_path / "state.json"))
        restored = PerArmSearch(["a", "b"], SPACE, 4, seed=3)
        restored.restore(str(tmp_path / "state.json"))
        assert restored.finished_values("a") == whole.finished_values("a") == [0.2, 0.6]
        assert deal(restored, 4, start=4) == deal(whole, 4, start=4)
        assert first_half

    def test_queued_configs_run_first_and_are_not_told_to_optuna(self) -> None:
        searcher = PerArmSearch(["a"], SPACE, 1, seed=0)
        searcher.enqueue({"arm": "a", "seed": 5, "phase": "final", "lr": 0.05})
        assert searcher.suggest("f0") == {"arm": "a", "seed": 5, "phase": "final", "lr": 0.05}
        searcher.on_trial_complete("f0", {"val_acc": 0.9})
        assert searcher.suggest("t0")["phase"] == "search" and searcher.finished_values("a") == []
        with pytest.raises(ValueError, match="phase"):
            searcher.enqueue({"arm": "a", "seed": 1})

    def test_in_epochs_mode_the_final_phase_follows_each_arms_own_budget(self) -> None:
        spec = StudySpec.model_validate(
            {
                "name": "epochs",
                "arms": [{"name": "small", "card": "digits_train"}, {"name": "big", "card": "digits_train"}],
                "budget": {"mode": "epochs", "epochs": 2},
            }
        )
        assert fixed_budget_images(spec) is None  # budget.images (20M by default) is no trial's budget here
        searcher = PerArmSearch(["small", "big"], SPACE, 2, seed=0, final=FinalSpec(top_k=1, seeds=2))
        searcher.budget_images = fixed_budget_images(spec)
        configs = dict(zip([f"t{i}" for i in range(4)], deal(searcher, 4), strict=True))
        # 2 epochs of 32 and of 64 images; t2 was stopped early at half its arm's budget
        searcher.on_trial_complete("t0", {"val_acc": 0.5, "images_seen": 64.0, "budget_images": 64.0})
        searcher.on_trial_complete("t1", {"val_acc": 0.6, "images_seen": 128.0, "budget_images": 128.0})
        searcher.on_trial_complete("t2", {"val_acc": 0.9, "images_seen": 32.0, "budget_images": 64.0})
        searcher.on_trial_complete("t3", {"val_acc": 0.4, "images_seen": 128.0, "budget_images": 128.0})
        finals = deal(searcher, 4, start=4)
        assert Searcher.FINISHED not in finals, "no final phase was queued for an arm"
        assert searcher.suggest("t8") == Searcher.FINISHED
        assert [(f["arm"], f["phase"], f["lr"]) for f in finals] == [
            ("small", "final", configs["t0"]["lr"]),
            ("small", "final", configs["t0"]["lr"]),
            ("big", "final", configs["t1"]["lr"]),
            ("big", "final", configs["t1"]["lr"]),
        ]

    def test_empty_space_still_deals_trials(self) -> None:
        searcher = PerArmSearch(["a"], {}, 2, seed=0)
        dealt = deal(searcher, 2)
        assert [{k: v for k, v in c.items() if k != "seed"} for c in dealt] == [{"arm": "a", "phase": "search"}] * 2
        assert dealt[0]["seed"] != dealt[1]["seed"]  # each trial its own seed: an empty space still gives two runs


class TestPerArmASHA:
    def test_rungs_match_rays_asha_milestones_and_stop_below_the_quantile(self) -> None:
        rungs = ArmRungs(max_reports=8, grace_reports=1, reduction_factor=2)
        assert [m for m, _ in rungs.rungs] == [8, 4, 2, 1]
        assert rungs.on_result("x", 1, 0.5) == TrialScheduler.CONTINUE
        assert rungs.on_result("y", 1, 0.4) == TrialScheduler.STOP  # below the median of {0.5}
        assert rungs.on_result("z", 1, 0.9) == TrialScheduler.CONTINUE
        assert rungs.on_result("z", 8, 0.9) == TrialScheduler.STOP  # the budget's end

    def test_arms_compete_only_within_themselves_and_final_phase_is_never_stopped(self) -> None:
        sched = PerArmASHA(max_reports=4, grace_reports=1, reduction_factor=2)
        assert sched.decide("a", "search", "a1", 1, {"val_acc": 0.9}) == TrialScheduler.CONTINUE
        assert sched.decide("b", "search", "b1", 1, {"val_acc": 0.1}) == TrialScheduler.CONTINUE
        assert sched.decide("a", "search", "a2", 1, {"val_acc": 0.1}) == TrialScheduler.STOP
        assert sched.decide("a", "final", "f1", 1, {"val_acc": 0.0}) == TrialScheduler.CONTINUE
        assert sched.decide("b", "search", "b2", 1, {"val_acc": 0.0, "diverged": 1.0}) == TrialScheduler.STOP

    def test_saved_rungs_give_the_same_decisions_after_a_restore(self) -> None:
        fed = [("a", "t1", 1, 0.5), ("a", "t2", 1, 0.7), ("a", "t2", 2, 0.8), ("b", "t3", 1, 0.2)]
        whole = PerArmASHA(max_reports=8, grace_reports=1, reduction_factor=2)
        for arm, trial, it, v in fed:
            whole.decide(arm, "search", trial, it, {"val_acc": v})
        restored = PerArmASHA(max_reports=8, grace_reports=1, reduction_factor=2)
        restored.load_state(whole.state())
        probes = [("a", "t4", 1, 0.6), ("a", "t1", 2, 0.75), ("b", "t5", 1, 0.1), ("a", "t2", 4, 0.5)]
        assert [restored.decide(a, "search", t, i, {"val_acc": v}) for a, t, i, v in probes] == [
            whole.decide(a, "search", t, i, {"val_acc": v}) for a, t, i, v in probes
        ]
