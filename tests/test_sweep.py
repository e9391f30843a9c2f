"""Per-arm search: equal trials per arm, one seeded Optuna study each."""

from __future__ import annotations

from ray.tune.search import Searcher

from study.config import ParamSpace
from study.sweep import PerArmSearch

SPACE = {
    "lr": ParamSpace(type="loguniform", low=0.01, high=0.3),
    "temperature": ParamSpace(type="choice", values=[2, 4, 8]),
}


def deal(searcher: PerArmSearch, n: int) -> list[dict]:
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_trials_are_dealt_equally_to_arms_then_the_search_finishes() -> None:
    searcher = PerArmSearch(["a", "b", "c"], SPACE, trials_per_arm=2, seed=0)
    configs = deal(searcher, 6)
    assert [c["arm"] for c in configs] == ["a", "b", "c", "a", "b", "c"]
    assert searcher.suggest("t6") == Searcher.FINISHED
    assert all(0.01 <= c["lr"] <= 0.3 and c["temperature"] in (2, 4, 8) for c in configs)


def test_same_seed_gives_the_same_suggestions_and_arms_search_independently() -> None:
    first = deal(PerArmSearch(["a", "b"], SPACE, 3, seed=7), 6)
    second = deal(PerArmSearch(["a", "b"], SPACE, 3, seed=7), 6)
    assert first == second
    a = [c["lr"] for c in first if c["arm"] == "a"]
    b = [c["lr"] for c in first if c["arm"] == "b"]
    assert a != b


def test_results_go_to_the_arm_that_ran_the_trial() -> None:
    searcher = PerArmSearch(["a", "b"], SPACE, 2, seed=0)
    deal(searcher, 2)
    searcher.on_trial_complete("t0", {"val_acc": 0.9, "lr": 0.1})
    study_a = searcher.searchers["a"]._ot_study
    study_b = searcher.searchers["b"]._ot_study
    assert [t.value for t in study_a.trials if t.value is not None] == [0.9]
    assert all(t.value is None for t in study_b.trials)


def test_empty_space_still_deals_trials() -> None:
    searcher = PerArmSearch(["a"], {}, 2, seed=0)
    assert deal(searcher, 2) == [{"arm": "a", "seed": 0, "phase": "search"}] * 2
