"""Throughput of kd-study's trial loop against a bare PyTorch KD loop on the same models.

Window: `--steps` steps after `--warmup` warm-up steps on both sides (ours: first to last report, reads inside).
Baseline: a bare loop (teacher + student + KD loss on a tensor in memory), same models and batch, same run.

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
from study.teacher.checkpoint import META, WEIGHTS, TeacherMeta


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
) -> tuple[float, int]:
    """kd-study's trial loop: img/s over all `steps` measured steps, and how many shard blocks it read in them.

    The surrogate is larger than the trial's shuffle buffer (4,096 images) plus everything the run consumes, so
    the loop keeps reading and decoding shard blocks inside the measured window, as a long trial does.
    """
    from study.data.shards import reader as loader

    count = 4096 + batch * (warmup + steps) + 4096
    card = CardSpec(
        name="bench_noise", kind="generated", generator="uniform_noise", count=count, image_size=size, seed=0
    )
    build_surrogate(card, str(root / "shards"))
    (root / "cards").mkdir(exist_ok=True)
    (root / "cards" / "bench_noise.yaml").write_text(card.model_dump_json())
    spec = StudySpec.model_validate(
        {
            "name": "bench",
            "student": {"arch": student_arch},
            "arms": [{"name": "noise", "card": "bench_noise.yaml"}],
            "train": {"batch_size": batch},
            # a report (eval on the 16-image folder, no checkpoint here) every `warmup` steps: the first one ends
            # the warm-up, the last one ends the run; the window between them covers every measured step
            "budget": {"images": batch * (warmup + steps), "report_every": batch * warmup, "eval_batch_size": 64},
        }
    )
    trial = KDTrial(
        spec, spec.arm("noise"), TrialPaths(teacher_uri, str(root / "shards"), str(root / "cards")), device=device
    )
    marks: list[tuple[float, float, int]] = []
    blocks = [0]
    decode = loader.shards.decode_block

    def counting_decode(sample):  # counts the shard blocks decoded (the trial's loader runs in this process)
        blocks[0] += 1
        return decode(sample)

    loader.shards.decode_block = counting_decode
    try:
        trial.run(lambda metrics, _: marks.append((time.perf_counter(), metrics["images_seen"], blocks[0])))
    finally:
        loader.shards.decode_block = decode
    (t0, seen0, blocks0), (t1, seen1, blocks1) = marks[0], marks[-1]
    return (seen1 - seen0) / (t1 - t0), blocks1 - blocks0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)  # also the report interval (steps % warmup == 0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (reports fall every --warmup steps)")
    torch.set_num_threads(args.threads)
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher_uri = make_teacher(root, args.teacher, args.size)
        bare = bare_loop(args.teacher, args.student, args.batch, args.steps, args.warmup, args.size, device)
        ours, blocks = kd_study_loop(
            root, teacher_uri, args.student, args.batch, args.steps, args.warmup, args.size, device
        )
    print(
        f"kd_step: ratio={ours / bare:.2f} kd={ours:.1f} img/s bare={bare:.1f} img/s "
        f"({args.student} <- {args.teacher}, {args.size}px, batch {args.batch}, {device.type}, "
        f"{args.threads} threads, {args.steps} measured steps, {blocks} shard blocks read inside the window)"
        + (f" peak_mem={torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device.type == "cuda" else "")
    )


if __name__ == "__main__":
    main()
