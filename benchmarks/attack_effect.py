"""Does the boundary attack lift the student? Student accuracy per surrogate with and without the attack, at equal
images seen, on the quickstart data (digits teacher; photo_crops = real out-of-domain, dead_leaves = generated).

Window: each trial's whole budget of `--images` images seen (accuracy at its last step; not a timing).
Baseline: the same surrogate's `none` arm (no attack), same seeds, same teacher, in the same run.

Arms per surrogate: `none` (plain KD), `online` (attack every batch; with kd-study >= the fidelity change both
orders, `after_mixup` = the authors' and `before_augment` = the earlier one), `offline` (the derived surrogate,
4 images per success) and, where `perturbation.clean_fraction` exists, `offline_clean` (the same with half of
the derived set clean source images). Where the authors' protocol options exist (#23), one arm per earlier way
against the authors' default, each changing that one option: `none_crop_resized` and `online_crop_resized`
(`train.crop: random_resized`), `online_equal_compute` (`online_batch`), `online_confident` (`deepen`),
`online_uniform_other` (`target`; the same as the default on surrogates that are no shaders) and
`online_earlier` (all four earlier ways: the online arm as it was before). Every arm gets the same budget of
images seen, the quickstart's training recipe (RandAugment, crop, mixup, T from the spec) and the same seeds; the
table gives the mean test accuracy over seeds and the attack's success rate. Runs against whatever `study` is
first on PYTHONPATH, so the same script measures the code before and after a change:

    PYTHONPATH=/path/to/checkout python benchmarks/attack_effect.py [--images 12000 --seeds 0 1 2 --arms all]

The default (3 arms x 2 surrogates, 3 seeds) takes about 30 minutes on 2 CPU cores (`--seeds 0` for a 10-minute
look); `--arms all` adds the earlier online order and `offline_clean`. Seeds matter: one seed's accuracy on a
poorly matched surrogate can move by several points, hence 3 seeds by default and the sample sd (n - 1) over them.

Prints `attack_effect_<surrogate>_<arm>: ratio=X` (accuracy / the surrogate's `none` accuracy) lines, then a
Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from study.config import PerturbationSpec, StudySpec, TeacherSpec, TrainSpec, load_card
from study.data.build import build_surrogate
from study.data.perturb import build_perturbed
from study.distill.trial import KDTrial, TrialPaths
from study.orchestrate.teacher_training import train_teacher
from study.resources import resolve_card_path
from study.teacher.checkpoint import load_meta

SURROGATES = ("photo_crops", "dead_leaves")
HAS_ORDER = "online_order" in PerturbationSpec.model_fields
HAS_CLEAN = "clean_fraction" in PerturbationSpec.model_fields
HAS_PROTOCOL = "online_batch" in PerturbationSpec.model_fields and "crop" in TrainSpec.model_fields
EARLIER = {"online_batch": "equal_compute", "deepen": "confident", "target": "uniform_other"}
"""kd-study's ways before the authors' protocol became the default (#23), besides `train.crop: random_resized`."""
RESIZED = {"crop": "random_resized"}


def arms(epsilon: float) -> dict[str, tuple[dict, dict]]:
    """Arm name -> (perturbation fields, train fields), only those the `study` on the path knows."""
    attack = {"epsilon": epsilon}
    out: dict[str, tuple[dict, dict]] = {"none": ({"mode": "none"}, {})}
    if HAS_ORDER:
        out["online_after_mixup"] = ({**attack, "mode": "online", "online_order": "after_mixup"}, {})
        out["online_before_augment"] = ({**attack, "mode": "online", "online_order": "before_augment"}, {})
    else:
        out["online_before_augment"] = ({**attack, "mode": "online"}, {})  # the only order before the change
    if HAS_PROTOCOL:
        online = {**attack, "mode": "online"}
        out["none_crop_resized"] = ({"mode": "none"}, RESIZED)
        out["online_crop_resized"] = (online, RESIZED)
        for name, value in EARLIER.items():
            out[f"online_{value}"] = ({**online, name: value}, {})
        out["online_earlier"] = ({**online, **EARLIER}, RESIZED)
    out["offline"] = ({**attack, "mode": "offline"}, {})
    if HAS_CLEAN:
        out["offline_clean"] = ({**attack, "mode": "offline", "clean_fraction": 0.5}, {})
    return out


def study_spec(
    args: argparse.Namespace, surrogate: str, name: str, perturbation: dict, train: dict, seed: int
) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "attack-effect",
            "seed": 0,  # offline arms read the derived set built with the study seed; trials vary `seed`
            "student": {"arch": args.student},
            "arms": [{"name": name, "card": surrogate, "perturbation": perturbation, "train": train}],
            "train": {"batch_size": args.batch, "temperature": args.temperature, "lr": args.lr}
            | ({} if args.flip is None else {"flip": args.flip == "on"}),
            "budget": {"images": args.images, "report_every": args.images},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12_000, help="images seen per trial (equal for every arm)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilon", type=float, default=32 / 255, help="attack ball (pixel units)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0, help="the quickstart's T")
    parser.add_argument("--flip", choices=["on", "off"], default=None, help="student flips (default: the spec's)")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher-arch", default="resnet8")
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--teacher-size", type=int, default=16, help="teacher input px (16: 4x cheaper than 32)")
    parser.add_argument("--surrogates", nargs="+", default=list(SURROGATES))
    parser.add_argument(
        "--arms",
        nargs="+",
        default=None,
        help="arm names, or 'all' (default: none, the first online order (the authors' where known), offline)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="keep teacher and shards here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    known = arms(args.epsilon)
    online = next(name for name in known if name.startswith("online"))
    chosen = set(known) if args.arms == ["all"] else set(args.arms or ["none", online, "offline"])
    if chosen - set(known):
        parser.error(f"unknown arms {sorted(chosen - set(known))}: this checkout has {sorted(known)}")
    with tempfile.TemporaryDirectory(prefix="kd-bench-attack-") as tmp:
        root = Path(args.workdir or tmp)
        teacher = str(root / "teacher")
        if not (root / "teacher" / "meta.json").is_file():
            recipe = TeacherSpec(
                arch=args.teacher_arch, epochs=args.teacher_epochs, batch_size=64, image_size=args.teacher_size
            )
            train_teacher(recipe, teacher)
        meta = load_meta(teacher)
        shards_root = str(root / "shards")
        rows: list[tuple[str, str, float, float, float]] = []
        for surrogate in args.surrogates:
            source = build_surrogate(load_card(resolve_card_path(surrogate)), shards_root, teacher=teacher)
            none_acc = None
            for name, (fields, train) in known.items():
                if name not in chosen:
                    continue
                perturbation = PerturbationSpec.model_validate(fields)
                start = time.perf_counter()
                offline_success = float("nan")
                if perturbation.mode == "offline":
                    derived = build_perturbed(source.root, teacher, shards_root, perturbation, seed=0)
                    offline_success = derived.manifest.card["success_rate"]
                accs, success, steps = [], [], []
                for seed in args.seeds:
                    spec = study_spec(args, surrogate, name, fields, train, seed)
                    trial = KDTrial(spec, spec.arms[0], TrialPaths(teacher, shards_root), seed=seed)
                    reports: list[dict[str, float]] = []
                    trial.run(lambda metrics, _, r=reports: r.append(metrics))
                    accs.append(reports[-1]["test_acc"])
                    steps.append(trial.step)  # optimizer steps: fewer where batches hold up to 4B images
                    success.append(reports[-1].get("attack_success", offline_success))
                acc = statistics.mean(accs)
                # sample sd (n - 1): the seeds are a sample of the trial's randomness, not the whole of it
                sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
                none_acc = acc if name == "none" else none_acc
                ratio = acc / none_acc if none_acc else float("nan")
                elapsed = time.perf_counter() - start
                print(
                    f"attack_effect_{surrogate}_{name}: ratio={ratio:.3f} test_acc={acc:.4f} sd={sd:.4f} "
                    f"per_seed={[round(a, 4) for a in accs]} attack_success={statistics.mean(success):.3f} "
                    f"steps={steps} seconds={elapsed:.0f}",
                    flush=True,
                )
                rows.append((surrogate, name, acc, sd, statistics.mean(success)))
        print(f"\nteacher {meta.arch} test_acc={meta.test_accuracy:.4f}; {args.images} images seen per trial; "
              f"seeds {args.seeds}; epsilon {args.epsilon:.4f}")  # fmt: skip
        print("| surrogate | arm | test_acc (mean) | sample sd over seeds | attack success |")
        print("| --- | --- | --- | --- | --- |")
        for surrogate, name, acc, sd, success in rows:
            print(f"| {surrogate} | {name} | {acc:.4f} | {sd:.4f} | {success:.3f} |")


if __name__ == "__main__":
    main()
