"""Spot-aware failure accounting: a lost node is not the trial's fault.

On spot capacity a node can be reclaimed at any time; with `gpu: 0.25` packing, one reclaim hits four trials. Tune
counts every failure against one `max_failures`, so a trial hit by two reclaims would be lost for good. Here two
budgets are kept per trial:

- **system failures** (the trial's process or node died: Ray reports a `RayActorError`; a spot reclaim, a lost
  node, an OOM kill) are forgiven up to `KD_STUDY_MAX_NODE_LOSSES` (default 10) per trial: the trial is retried
  from its last checkpoint and its `search.max_failures` is untouched;
- **trial exceptions** (the trial's code raised: a `RayTaskError`) spend `search.max_failures`, as before.

How, with Tune's public pieces only: Tune decides to retry when `num_failures <= trial.max_failures`; this callback
sets each trial's `max_failures` to `search.max_failures + forgiven system failures + 1`, so Tune retries every
failure up to one exception past the budget, and classifies each failure right after it (`on_trial_recover`). A
trial whose exceptions went past the budget is marked `exhausted` in a small JSON ledger beside the experiment; the
guard that wraps the trainable reads it when the retry starts and raises at once, which Tune then records as the
trial's final error (one process start, no training). The ledger also survives a lost driver: a restore resumes
errored trials when one of them errored by node loss (`resume_errored`), gives those a fresh system budget, and
the guard ends the exhausted ones again at once, so only node-loss victims run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from study import storage

log = logging.getLogger(__name__)

LEDGER_SUFFIX = ".kd_study_failures.json"
ENV_NODE_LOSSES = "KD_STUDY_MAX_NODE_LOSSES"


class TrialFailuresExhausted(RuntimeError):
    """A retried trial whose exceptions already spent `search.max_failures`; names the last error."""


def max_node_losses() -> int:
    raw = os.environ.get(ENV_NODE_LOSSES, "10")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {ENV_NODE_LOSSES}={raw!r}: expected an integer") from None


def ledger_location(tune_dir: str, experiment: str) -> str:
    """Beside the experiment's Tune folder, like the ASHA rungs (Tune syncs its staged copy over the folder)."""
    return storage.join(tune_dir, experiment + LEDGER_SUFFIX)


def read_ledger(uri: str) -> dict[str, dict[str, Any]]:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def was_system_failure(trial: Any) -> bool:
    """Whether the trial's latest failure was its process or node dying (not its code raising).

    Tune writes the failure it just handled to the trial's local folder on the driver (`pickled_error_file`); an
    unreadable one counts as an exception, the conservative side."""
    from ray.exceptions import RayActorError, RayTaskError

    path = trial.pickled_error_file
    if not path or not Path(path).exists():
        return False
    try:
        import cloudpickle

        with open(path, "rb") as fh:
            error = cloudpickle.load(fh)  # written by Tune in this process a moment ago, never read from storage
    except Exception:
        return False
    if isinstance(error, RayTaskError):
        error = error.as_instanceof_cause()
    return isinstance(error, RayActorError) and not isinstance(error, RayTaskError)


class FailureBudget(tune.Callback):
    """Keeps the two budgets (module docstring) and the ledger beside the experiment."""

    def __init__(self, ledger_uri: str, max_failures: int, node_losses: int | None = None) -> None:
        self.ledger_uri, self.max_failures = ledger_uri, max_failures
        self.node_losses = max_node_losses() if node_losses is None else node_losses
        self.ledger: dict[str, dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with its state and a restore unpickles them: the ledger is read afresh from
        # storage instead (prepare_restore may have changed it since).
        return {**self.__dict__, "ledger": None}

    def entry(self, trial_id: str) -> dict[str, Any]:
        if self.ledger is None:
            self.ledger = read_ledger(self.ledger_uri)
        return self.ledger.setdefault(
            trial_id,
            {"node_losses": 0, "forgiven": 0, "errors": 0, "limit": self.node_losses, "exhausted": False},
        )

    def _ceiling(self, trial: Any) -> None:
        trial.max_failures = self.max_failures + self.entry(trial.trial_id)["forgiven"] + 1

    def _save(self) -> None:
        storage.write_text(self.ledger_uri, json.dumps(self.ledger, sort_keys=True))

    def _record(self, trial: Any) -> bool:
        entry = self.entry(trial.trial_id)
        system = was_system_failure(trial)
        if system:
            entry["node_losses"] += 1
            if entry["node_losses"] <= entry["limit"]:
                entry["forgiven"] += 1
        else:
            entry["errors"] += 1
            text = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
            entry["last_error"] = text.strip()[-2000:] or "unknown"
        entry["exhausted"] = entry["errors"] > self.max_failures
        log.warning(
            "trial %s failed (%s): %d node loss(es), %d forgiven; %d exception(s) of %d allowed",
            trial.trial_id,
            "its process or node died" if system else "it raised",
            entry["node_losses"],
            entry["forgiven"],
            entry["errors"],
            self.max_failures,
        )
        return system

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ceiling(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)
        self._ceiling(trial)
        self._save()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self.entry(trial.trial_id)
        if not entry["exhausted"]:  # else this is the guard's refusal, already counted
            system = self._record(trial)
            entry["resume"] = system  # errored by node loss: a restore resumes it
            entry["exhausted"] = not system
        self._save()


def prepare_restore(ledger_uri: str) -> bool:
    """Before a restore: whether errored trials must resume (one of them errored by node loss); those get a
    fresh system budget. Exhausted trials stay marked, so their resumption ends at once."""
    ledger = read_ledger(ledger_uri)
    victims = [entry for entry in ledger.values() if entry.get("resume")]
    for entry in victims:
        entry["forgiven"] = entry["node_losses"]
        entry["limit"] = entry["node_losses"] + max_node_losses()
        entry["resume"] = False
    if victims:
        storage.write_text(ledger_uri, json.dumps(ledger, sort_keys=True))
    return bool(victims)


def guarded(trainable: Callable[..., None], ledger_uri: str) -> Callable[..., None]:
    """`trainable` that first refuses to run a trial the ledger marks exhausted (see the module docstring)."""

    def run(config: dict[str, Any], **kwargs: Any) -> None:
        trial_id = tune.get_context().get_trial_id()
        if trial_id and storage.exists(ledger_uri):
            entry = read_ledger(ledger_uri).get(trial_id, {})
            if entry.get("exhausted"):
                raise TrialFailuresExhausted(
                    f"trial {trial_id} raised {entry.get('errors')} time(s), past search.max_failures; "
                    f"its last error: {entry.get('last_error', 'unknown')}"
                )
        trainable(config, **kwargs)

    run.__name__ = getattr(trainable, "__name__", "trainable")
    return run
