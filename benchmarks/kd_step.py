"""Throughput of kd-study's trial loop against a bare PyTorch KD loop on the same models.

kd-study's loop streams a surrogate from shards, adapts it to the teacher's input, runs the paper's batched
augmentation + mixup, the teacher and the student; the bare loop runs only teacher + student + KD loss on a tensor
already in memory. The ratio is the share of the hardware's KD speed the full trial loop keeps (goal >= 0.9).

    python benchmarks/kd_step.py [--teacher resnet32x4 --student resnet8x4 --batch 64 --steps 8 --threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from study import storage
from study.config import CardSpec, StudySpec
from study.data.build import build_surrogate
from study.device import pick_device
from study.distill.loss import kd_loss
from study.distill.trial import KDTrial, TrialPaths
from study.models import create_model
from study.teacher import META, WEIGHTS, TeacherMeta


def make_teacher(root: Path, arch: str, size: int) -> str:
    """A randomly initialised teacher (speed does not depend on weights) with a tiny labelled eval folder."""
    for split in ("val", "test"):
        for label in ("a", "b"):
            folder = root / "evaldata" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.random.default_rng(i).integers(0, 255, (size, size, 3), np.uint8)).save(
                    folder / f"{i}.png"
                )
    model = create_model(arch, num_classes=10, in_channels=3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    meta = TeacherMeta(
        arch=arch,
        num_classes=10,
        classes=[str(i) for i in range(10)],
        image_size=size,
        channels=3,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        dataset="folder",
        dataset_root=str(root / "evaldata"),
        weights_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
    )
    uri = str(root / "teacher")
    storage.write_bytes(storage.join(uri, WEIGHTS), buf.getvalue())
    storage.write_text(storage.join(uri, META), meta.model_dump_json())
    return uri


def bare_loop(
    teacher_arch: str, student_arch: str, batch: int, steps: int, warmup: int, size: int, device: torch.device
) -> float:
    teacher = create_model(teacher_arch, 10, 3).to(device).eval()
    student = create_model(student_arch, 10, 3).to(device).train()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    amp = device.type == "cuda"
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
        loss = kd_loss(s, t, 4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def kd_study_loop(
    root: Path,
    teacher_uri: str,
    student_arch: str,
    batch: int,
    steps: int,
    warmup: int,
    size: int,
    device: torch.device,
) -> float:
    card = CardSpec(
        name="bench_leaves", kind="generated", generator="dead_leaves", count=batch * 16, image_size=size, seed=0
    )
    build_surrogate(card, str(root / "shards"))
    (root / "cards").mkdir(exist_ok=True)
    (root / "cards" / "bench_leaves.yaml").write_text(card.model_dump_json())
    spec = StudySpec.model_validate(
        {
            "name": "bench",
            "student": {"arch": student_arch},
            "arms": [{"name": "leaves", "card": "bench_leaves.yaml"}],
            "train": {"batch_size": batch},
            "budget": {"images": batch * (warmup + steps), "report_every": batch * warmup, "eval_batch_size": 64},
        }
    )
    trial = KDTrial(
        spec, spec.arm("leaves"), TrialPaths(teacher_uri, str(root / "shards"), str(root / "cards")), device=device
    )
    rates: list[float] = []
    trial.run(lambda metrics, _: rates.append(metrics["images_per_s"]))
    return rates[-1]  # the report after warm-up covers exactly the measured steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher_uri = make_teacher(root, args.teacher, args.size)
        bare = bare_loop(args.teacher, args.student, args.batch, args.steps, args.warmup, args.size, device)
        ours = kd_study_loop(root, teacher_uri, args.student, args.batch, args.steps, args.warmup, args.size, device)
    print(
        f"kd_step: ratio={ours / bare:.2f} kd={ours:.1f} img/s bare={bare:.1f} img/s "
        f"({args.student} <- {args.teacher}, {args.size}px, batch {args.batch}, {device.type}, "
        f"{args.threads} threads)"
    )


if __name__ == "__main__":
    main()
