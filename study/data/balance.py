"""Teacher-filtered selection of a surrogate: keep candidates by teacher-predicted class up to per-class quotas.

Frank & Davis (CVPR 2025) pass every surrogate through the teacher and keep 50K images, an equal number per
predicted class; their imbalance ablation keeps a long-tailed mix instead (`BalanceSpec.quotas`).

Balanced means balanced: like the authors, the scan goes on until every quota is met; the candidate ceiling
(`BalanceSpec.candidate_ceiling`, scaling with the quotas) only stops a scan for a class the teacher (almost) never
predicts, and such a selection says so (`SelectionRecord.label`: "not balanced (k of K classes filled)").

Unbiased order: candidates are scanned in a seeded random order (`scan_order`, deterministic from the card's seed):
a seeded permutation of a real source, the index order of a generator's independent draws. Quotas fill first-come,
so a scan in the stored order of a class-sorted source (ImageNet folders, Food-101, Pets, Tiny ImageNet) would fill
every quota from the first source classes and keep a far less diverse set than the source; in random order each
source class is kept in proportion. The raw candidate pool (the paper's class-entropy population) is the first N
candidates of the same order.

Determinism: the kept set depends only on the scan order and the sequence of teacher predictions, which is stored
with the selection (candidates are scanned in fixed-size batches). A CPU and a GPU build therefore keep the same
images unless the teacher's top two logits for some candidate are so close that the devices' rounding puts them in
a different order (a prediction at a tie); predictions run in full precision (no autocast, no TF32) to make that
rare.

Resume: the finished scan is persisted as `_parts/selection.json` (kept candidate indices and predictions, raw and
achieved histograms), so a killed build rewrites neither the scan nor the shards it finished.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from study import storage
from study.config import BalanceSpec, CardSpec
from study.data.shards import SelectionRecord, ShardError
from study.data.shards.reader import to_teacher_input
from study.teacher.checkpoint import Teacher
from study.teacher.inference import normalise, predict

log = logging.getLogger(__name__)

SELECTION = "selection.json"
SCAN_BATCH = 512  # fixed: a batch size change could move a tie on some devices, so it is not a knob

CandidateSource = Callable[[int, int], np.ndarray]
"""`(start, n)` -> uint8 (n, H, W, C): the candidates at scan positions `start .. start+n-1`."""
SCAN_ORDER_STREAM = 0x5CA4  # separates the scan order's random stream from the card's image streams


def scan_order(card: CardSpec, n_candidates: int) -> np.ndarray:
    """The order a balanced build scans candidates in: candidate indices, deterministic from the card.

    A real source (candidate i is its i-th image as loaded: `source.split`, at most `balance.candidates`) is scanned
    in a permutation of `range(n_candidates)` seeded by the card. A generated source is scanned in index order:
    its image i is already an independent draw from its own stream seeded by (card seed, i), so index order is a
    seeded random order; it also renders in consecutive blocks and does not depend on `n_candidates`, so a larger
    candidate ceiling never changes a selection that filled below the smaller one. The report takes the raw pool
    as the first N candidates of this order without a teacher.
    """
    if n_candidates < 0:
        raise ValueError(f"card '{card.name}': n_candidates must be >= 0, got {n_candidates}")
    if card.kind == "generated":
        return np.arange(n_candidates)
    return np.random.default_rng([card.seed, SCAN_ORDER_STREAM]).permutation(n_candidates)


ScanProgress = Callable[[int, int, int], None]
"""`(scanned, kept, budget)`, called after each scanned batch."""


class Selection(BaseModel):
    """The outcome of a scan: kept candidates in scan order with their teacher predictions."""

    model_config = ConfigDict(extra="forbid")
    teacher: str
    card: dict
    candidates: list[int]
    predictions: list[int]
    record: SelectionRecord


def selection_uri(root: str) -> str:
    return storage.join(root, "_parts", SELECTION)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """No TF32 and no timing-picked cuDNN algorithms while predicting: TF32 keeps 10 mantissa bits, which would
    move many near-ties away from the CPU's prediction; `pick_device` turns both on for training speed."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = False, False, False, True
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved


def teacher_predictions(teacher: Teacher, images: np.ndarray) -> np.ndarray:
    """Teacher-predicted class (argmax of logits; the first class wins an exact tie) of uint8 (N, H, W, C) images."""
    device = next(teacher.model.parameters()).device
    x = to_teacher_input(torch.from_numpy(np.ascontiguousarray(images)).to(device), teacher.meta.channels,
                         teacher.meta.image_size)  # fmt: skip
    with full_precision():
        logits = predict(teacher.model, normalise(x, teacher.meta.mean, teacher.meta.std), batch_size=SCAN_BATCH)
    return logits.argmax(1).cpu().numpy()


def scan(
    source: CandidateSource,
    budget: int,
    spec: BalanceSpec,
    teacher: Teacher,
    card: dict,
    on_scan: ScanProgress | None = None,
    order: np.ndarray | None = None,
) -> Selection:
    """Scan up to `budget` candidates in order, keeping each while its predicted class's quota is not full.

    `order[p]` is the candidate index at scan position p (`scan_order`); the selection records candidate
    indices. None: position p is candidate p.

    Stops at the candidate that fills the last quota (so `candidates_scanned` does not depend on the batch size)
    or at the ceiling `budget` (`BalanceSpec.candidate_ceiling`); then `record.complete` is False, some class has
    fewer than its quota and a warning names those classes (`shortfall_message`).
    """
    num_classes = teacher.meta.num_classes
    quotas = spec.quotas(num_classes)
    raw, achieved = [0] * num_classes, [0] * num_classes
    kept_ids: list[int] = []
    kept_preds: list[int] = []
    open_classes = sum(q > 0 for q in quotas)
    scanned = 0
    for start in range(0, budget, SCAN_BATCH):
        preds = teacher_predictions(teacher, source(start, min(SCAN_BATCH, budget - start)))
        for offset, c in enumerate(preds.tolist()):
            raw[c] += 1
            scanned = start + offset + 1
            if achieved[c] < quotas[c]:
                achieved[c] += 1
                kept_ids.append(start + offset if order is None else int(order[start + offset]))
                kept_preds.append(c)
                open_classes -= achieved[c] == quotas[c]
                if open_classes == 0:
                    break
        if on_scan:
            on_scan(scanned, len(kept_ids), budget)
        if open_classes == 0:
            break
    record = SelectionRecord(
        mode=spec.mode,
        quotas=quotas,
        candidates_budget=budget,
        candidates_scanned=scanned,
        kept=len(kept_ids),
        raw_histogram=raw,
        achieved=achieved,
        acceptance_rate=scanned / len(kept_ids) if kept_ids else None,
        complete=open_classes == 0,
    )
    if not record.complete:
        log.warning("%s", shortfall_message(record, str(card.get("name", "?")), teacher.meta.classes))
    return Selection(
        teacher=teacher.meta.teacher_id, card=card, candidates=kept_ids, predictions=kept_preds, record=record
    )


def shortfall_message(record: SelectionRecord, card_name: str, classes: list[str]) -> str:
    """The warning of a scan that reached its ceiling with quotas unmet: which classes are empty, which short."""
    short = record.short_classes()
    named = [f"{c} ({classes[c]})" if c < len(classes) and classes[c] != str(c) else str(c) for c in short]
    empty = [n for c, n in zip(short, named, strict=True) if record.achieved[c] == 0]
    below = [n for c, n in zip(short, named, strict=True) if record.achieved[c] > 0]
    parts = ([f"class {', '.join(empty)} empty"] if empty else []) + (
        [f"class {', '.join(below)} below quota"] if below else []
    )
    return (
        f"card '{card_name}': {record.label()}: the teacher scan stopped at the candidate ceiling "
        f"{record.candidates_budget} with {' and '.join(parts)}; kept per class {record.achieved} of quotas "
        f"{record.quotas} (raise balance.candidates, or give the card a source the teacher maps to every class)"
    )


def load_selection(root: str, teacher_id: str, card: dict) -> Selection | None:
    """A persisted selection of the same card and teacher, or None if there is none.

    A selection of another card or teacher means the folder holds a different surrogate's partial build, whose
    finished shards must not be mixed with this one's: that is an error, not a silent rebuild.
    """
    uri = selection_uri(root)
    if not storage.exists(uri):
        return None
    try:
        selection = Selection.model_validate_json(storage.read_text(uri))
    except ValidationError:
        log.warning("%s: unreadable selection, scanning again", uri)
        return None
    if selection.teacher != teacher_id or selection.card != card:
        raise ShardError(
            f"{uri}: a partial build selected by teacher '{selection.teacher}' from another card or teacher is here; "
            f"remove {root} or give the card another name"
        )
    return selection


def save_selection(root: str, selection: Selection) -> None:
    storage.write_text(selection_uri(root), selection.model_dump_json())
