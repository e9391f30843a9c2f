"""`kd-study rank`'s model: recovers a known ordering from synthetic criteria; refuses with too few surrogates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.rank import RankError, score_candidates, validate


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Surrogates whose accuracy is a known linear function of two criteria; a third criterion is noise."""
    rng = np.random.default_rng(seed)
    entropy, vendi, noise = rng.uniform(0, 1, n), rng.uniform(1, 50, n), rng.normal(size=n)
    acc = 0.1 + 0.5 * entropy + 0.006 * vendi
    return pd.DataFrame(
        {
            "surrogate": [f"s{i}" for i in range(n)],
            "test_acc": acc,
            "crit_raw_class_entropy": entropy,
            "crit_raw_feature_vendi": vendi,
            "crit_raw_edge_density": noise,
        }
    )


def test_rank_recovers_a_known_ordering_of_candidates() -> None:
    candidates = synthetic(6, seed=1).drop(columns="test_acc").rename(columns={"surrogate": "card"})
    truth = 0.5 * candidates["crit_raw_class_entropy"] + 0.006 * candidates["crit_raw_feature_vendi"]
    scored = score_candidates(synthetic(12, seed=0), candidates, alpha=0.01)
    assert scored["card"].tolist() == candidates["card"][np.argsort(-truth.to_numpy())].tolist()


def test_leave_one_out_validation_beats_entropy_when_a_second_criterion_matters() -> None:
    v = validate(synthetic(12, seed=0), alpha=0.01)
    assert v.model_rho > 0.95 and v.model_rho > v.entropy_rho and v.beats_entropy
    assert "beats class entropy alone" in v.verdict() and len(v.predictions) == 12


def test_validation_says_plainly_when_the_model_does_not_beat_entropy() -> None:
    points = synthetic(8, seed=2)
    points["test_acc"] = points["crit_raw_class_entropy"]  # entropy alone is perfect
    v = validate(points)
    assert not v.beats_entropy and "does NOT beat class entropy alone" in v.verdict()


def test_rank_refuses_below_five_surrogates() -> None:
    with pytest.raises(RankError, match="at least 5"):
        score_candidates(synthetic(4, seed=0), synthetic(2, seed=1))
