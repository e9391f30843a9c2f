"""What a trial reads (`TrialPaths`), apart from the trial itself: a Ray worker that unpickles it imports this
module, not torch, so a stand-in trainable (tests, benchmarks/tune_scale.py) starts without torch's import time and
memory (~0.9 GB and ~12 s of CPU per trial process on 2 cores)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from study.config import ArmSpec, CardSpec, load_card
from study.data.shards.cache import ShardCacheSpec
from study.resources import resolve_card_path


@dataclass(frozen=True)
class TrialPaths:
    """What a trial reads, resolved by the driver; plain data so the object pickles to Ray workers.

    `cards` maps arm names to the cards the driver resolved: Tune runs each trial in its own directory, so a trial
    must never resolve a card path itself. `cards_dir` serves direct use outside Tune (one trial from the CLI,
    benchmarks): arms missing from `cards` are resolved against it, relative paths of a spec's folder.
    """

    teacher: str
    shards_root: str
    cards_dir: str | None = None
    cards: dict[str, CardSpec] = field(default_factory=dict)
    eval_root: str | None = None  # <root>/eval: the teacher's val/test splits as shards (None: from meta.dataset)
    cache: ShardCacheSpec | None = None  # node-local copies of S3 shards
    teachers: dict[str, str] = field(default_factory=dict)  # a multi-teacher study: teacher id -> checkpoint

    def for_arm(self, arm: ArmSpec) -> TrialPaths:
        """The paths of an arm's trial: its own teacher's checkpoint in a multi-teacher study."""
        if arm.teacher is None or not self.teachers:
            return self
        return replace(self, teacher=self.teachers[arm.teacher])

    def card(self, arm: ArmSpec) -> CardSpec:
        return self.cards[arm.name] if arm.name in self.cards else card_for_arm(arm, self.cards_dir)


def card_for_arm(arm: ArmSpec, cards_dir: str | None) -> CardSpec:
    """The arm's card; a mixture's components are read too (relative to the mixture card's folder)."""
    from study.data.mixture import resolve_mixture

    path = resolve_card_path(arm.card, Path(cards_dir) if cards_dir else None)
    return resolve_mixture(load_card(path), path.parent)
