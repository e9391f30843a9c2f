"""Import a teacher trained elsewhere: a state dict, a TorchScript file or a `torch.export` program.

kd-study exists for a team that has a trained teacher and lacks its training data, so a teacher need not come from
`kd-study teacher train`. Whatever the file, the result is the layout every other command reads: `weights.pt` (the
checkpoint, sha256-checked on load) plus `meta.json`, whose `format` says how `load_teacher` rebuilds the model.
Nothing is unpickled: state dicts load with `weights_only=True`, TorchScript and exported programs through their
own loaders. The model must map normalised input (mean/std in `meta.json`) to logits, as every teacher does.

Evaluation data is optional. With it (`eval_dataset`, any real source; a folder without split folders is split
into disjoint train/val/test), the import measures val/test accuracy and the data's channel statistics become the
default mean/std. Without it, mean/std are required and the meta records `has_eval_data: false`: such a teacher
can only be searched with `search.metric: agreement`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from study import storage
from study.data.shards.reader import to_teacher_input
from study.data.sources.registry import load_source
from study.models import create_model
from study.models.registry import TORCHVISION_PREFIX, list_models, torchvision_name
from study.teacher.checkpoint import (
    META,
    NO_EVAL_DATA,
    WEIGHTS,
    Teacher,
    TeacherError,
    TeacherMeta,
    channel_stats,
    model_from_bytes,
)
from study.teacher.inference import accuracy, normalise

log = logging.getLogger(__name__)

# wrappers that training scripts put around a state dict, and prefixes that DataParallel / torch.compile /
# Lightning add to every key
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "teacher", "module")
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
_SHOWN_KEYS = 5


@dataclass(frozen=True)
class ImportOptions:
    """What `kd-study teacher import` takes besides the file: how to rebuild, feed and evaluate the model."""

    arch: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    eval_dataset: str | None = None
    eval_root: str | None = None
    eval_params: dict[str, Any] = field(default_factory=dict)
    fine_grained: bool | None = None


def parse_floats(text: str, what: str) -> list[float]:
    """`0.5` or `0.485,0.456,0.406` -> floats; the message names the option."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TeacherError(f"{what}: expected one number or comma-separated numbers, got {text!r}") from None
    if not values:
        raise TeacherError(f"{what}: expected one number or comma-separated numbers, got {text!r}")
    return values


def detect_format(data: bytes) -> str:
    """`state_dict`, `torchscript` or `export` from the file's contents (not its name).

    TorchScript and `torch.export` archives are zip files with a `code/` folder and a `serialized_exported_program`
    entry respectively; anything else is read as a `torch.save` checkpoint.
    """
    if not data.startswith(b"PK"):
        return "state_dict"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    if any("serialized_exported_program" in n or n.split("/", 1)[-1].startswith("models/") for n in names):
        return "export"
    if any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "state_dict"


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a bare state dict or one under a usual key (`state_dict`, `model`, ...)."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state_dict(obj[key], source)
        found = sorted(str(k) for k in obj)[:_SHOWN_KEYS]
        raise TeacherError(
            f"{source}: a checkpoint without a state dict (top-level keys {found}); save one with "
            "torch.save(model.state_dict(), FILE)"
        )
    raise TeacherError(f"{source}: holds a {type(obj).__name__}, not a state dict")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix every key shares (`module.` from DataParallel, `_orig_mod.` from torch.compile, ...)."""
    changed = True
    while changed:
        changed = False
        for prefix in _KEY_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def infer_shape_args(
    probe: dict[str, torch.Tensor], state: dict[str, torch.Tensor], three_channels: bool
) -> tuple[int | None, int]:
    """(num_classes, in_channels) read off the checkpoint by comparing it with a 1-class build (`probe`).

    The head's weight and bias are the tensors whose first dimension is 1 in the probe (and the rest equal); the
    stem is the probe's first 4-d weight. Works for any zoo or torchvision classifier without naming its layers.
    """
    classes = set()
    for key, want in probe.items():
        got = state.get(key)
        if got is None or got.shape == want.shape or got.dim() != want.dim() or want.dim() == 0:
            continue
        if want.shape[0] == 1 and got.shape[1:] == want.shape[1:]:
            classes.add(int(got.shape[0]))
    channels = 3
    stem = next((k for k, v in probe.items() if v.dim() == 4), None)
    if not three_channels and stem in state and state[stem].dim() == 4:
        channels = int(state[stem].shape[1])
    return (classes.pop() if len(classes) == 1 else None), channels


def rename_head(model_keys: dict[str, torch.Size], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map one renamed module (e.g. `linear.*` -> `fc.*`, `classifier.*` -> `fc.*`) when that is the only difference.

    Applies only when the missing and the unexpected keys each belong to a single module with the same parameter
    names and shapes, so it cannot guess wrong silently.
    """
    missing = [k for k in model_keys if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_keys]
    if not missing or len(missing) != len(unexpected):
        return state
    modules = {k.rsplit(".", 1)[0] for k in missing}, {k.rsplit(".", 1)[0] for k in unexpected}
    if len(modules[0]) != 1 or len(modules[1]) != 1:
        return state
    (want,), (have,) = modules
    mapping = {f"{have}.{k.rsplit('.', 1)[1]}": f"{want}.{k.rsplit('.', 1)[1]}" for k in unexpected}
    # compared past the first dimension: the class count of a head may still be unknown (a 1-class probe)
    if sorted(mapping.values()) != sorted(missing) or any(
        state[a].shape[1:] != model_keys[b][1:] for a, b in mapping.items()
    ):
        return state
    log.info("renamed checkpoint keys %s -> %s", have, want)
    return {mapping.get(k, k): v for k, v in state.items()}


def mismatch_message(source: str, arch: str, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """None when `state` fits `model`; else a message listing the first missing/unexpected/misshapen keys."""
    want = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k} {list(state[k].shape)} (model: {list(want[k])})" for k in want if k in state and state[k].shape != want[k]
    ]
    if not (missing or unexpected or shapes):
        return None
    lines = [f"{source}: the state dict does not fit arch '{arch}':"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{more}")
    stem = state.get("conv1.weight")
    if arch.startswith("tv_") and stem is not None and stem.shape[-1] == 7:
        lines.append(
            f"  hint: conv1 is 7x7, torchvision's own ImageNet stem; '{arch}' is the zoo's small-image variant "
            f"(3x3 stem, no max-pool): use --arch {arch.removeprefix('tv_')}"
        )
    elif torchvision_name(arch) and stem is not None and stem.shape[-1] == 3 and arch.startswith("resnet"):
        lines.append(f"  hint: conv1 is 3x3, the zoo's small-image stem: use --arch tv_{arch}")
    elif arch in list_models() and torchvision_name(TORCHVISION_PREFIX + arch):
        lines.append(f"  hint: '{arch}' is the zoo's model; torchvision's is --arch {TORCHVISION_PREFIX}{arch}")
    return "\n".join(lines)


def model_from_state_dict(
    data: bytes, source: str, arch: str, num_classes: int | None
) -> tuple[torch.nn.Module, bytes, int]:
    """The built model, its re-saved plain state dict (keys as the arch names them) and its class count."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling refusal is the same user error
        raise TeacherError(
            f"{source}: not a plain state dict ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "save one with torch.save(model.state_dict(), FILE), or give a TorchScript or torch.export (.pt2) file"
        ) from None
    state = strip_prefixes(unwrap_state_dict(obj, source))
    try:
        probe = create_model(arch, num_classes=1, in_channels=3)
    except ValueError as err:
        raise TeacherError(f"--arch: {err}") from None
    state = rename_head({k: v.shape for k, v in probe.state_dict().items()}, state)
    inferred_classes, channels = infer_shape_args(probe.state_dict(), state, torchvision_name(arch) is not None)
    if num_classes is not None and inferred_classes is not None and num_classes != inferred_classes:
        raise TeacherError(
            f"{source}: the checkpoint's head has {inferred_classes} classes, --num-classes/--classes say {num_classes}"
        )
    classes = num_classes or inferred_classes
    if classes is None:
        raise TeacherError(f"{source}: cannot tell the number of classes from the checkpoint; give --num-classes")
    model = create_model(arch, num_classes=classes, in_channels=channels)
    if (problem := mismatch_message(source, arch, model, state)) is not None:
        raise TeacherError(problem)
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent (old checkpoints)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return model, buf.getvalue(), classes


def probe_program(model: torch.nn.Module, image_size: int, source: str) -> tuple[int, int]:
    """(channels, num_classes) of a program by running it on a blank image, 3 channels first, then 1."""
    errors = []
    for channels in (3, 1):
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, channels, image_size, image_size))
        except Exception as err:  # a program says only that it failed
            errors.append(f"{channels} channels: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
            continue
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise TeacherError(f"{source}: the program must return (N, classes) logits, got {type(out).__name__}")
        return channels, int(out.shape[1])
    raise TeacherError(f"{source}: the program does not run on a {image_size}px image: {'; '.join(errors)}")


def exported_image_size(data: bytes) -> int | None:
    """The square input size an exported program was traced with, when it is fixed."""
    program = torch.export.load(io.BytesIO(data))
    inputs = set(program.graph_signature.user_inputs)
    shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name in inputs]
    if len(shapes) == 1 and len(shapes[0]) == 4 and isinstance(shapes[0][2], int) and shapes[0][2] == shapes[0][3]:
        return int(shapes[0][2])
    return None


def default_image_size(arch: str | None, fmt: str, data: bytes) -> int:
    if fmt == "export" and (size := exported_image_size(data)) is not None:
        return size
    if fmt == "state_dict" and arch is not None:
        return 224 if torchvision_name(arch) else 32
    raise TeacherError(f"--image-size: needed for a {fmt} file (the input size the teacher expects)")


def per_channel(values: list[float], channels: int, what: str) -> list[float]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise TeacherError(f"{what}: {len(values)} values for a {channels}-channel teacher (give 1 or {channels})")
    return values


def import_teacher(weights: str, out_uri: str, options: ImportOptions) -> Teacher:
    """Import `weights` (a path or URI) as a teacher under `out_uri`; see the module docstring."""
    source = storage.resolve(weights)
    if not storage.exists(source):
        raise TeacherError(f"{source}: weights file not found")
    data = storage.read_bytes(source)
    fmt = detect_format(data)
    if fmt == "state_dict" and options.arch is None:
        raise TeacherError(f"{source}: a state dict needs --arch (a zoo or torchvision.models name)")
    if options.classes is not None and options.num_classes is not None and len(options.classes) != options.num_classes:
        raise TeacherError(f"--classes lists {len(options.classes)} names, --num-classes is {options.num_classes}")
    wanted_classes = options.num_classes or (len(options.classes) if options.classes else None)
    # absolute, so that trials (each in its own Tune directory) find the eval data
    eval_root = storage.resolve(options.eval_root) if options.eval_root is not None else None
    image_size = options.image_size or default_image_size(options.arch, fmt, data)
    if fmt == "state_dict":
        assert options.arch is not None
        model, stored, num_classes = model_from_state_dict(data, source, options.arch, wanted_classes)
        channels = model.state_dict()[next(k for k, v in model.state_dict().items() if v.dim() == 4)].shape[1]
        arch = options.arch
    else:
        model, stored = model_from_bytes(data, fmt), data
        channels, num_classes = probe_program(model, image_size, source)
        if wanted_classes is not None and wanted_classes != num_classes:
            raise TeacherError(
                f"{source}: the program outputs {num_classes} classes, --num-classes/--classes say {wanted_classes}"
            )
        arch = options.arch or fmt
    model.eval()

    classes = options.classes
    accs: dict[str, float] = {}
    mean, std = options.mean, options.std
    params = dict(options.eval_params)
    if options.eval_dataset is not None:
        if options.eval_dataset == "folder" and classes is not None:
            params.setdefault("classes", classes)  # score the folder in the teacher's class order, not A-Z
        splits = {
            s: load_source(options.eval_dataset, s, image_size, root=eval_root, params=params) for s in ("val", "test")
        }
        classes = check_classes(classes, splits["test"].classes, num_classes, options.eval_dataset)
        if mean is None or std is None:
            adapted = [
                teacher_input(p.images, channels, image_size).permute(0, 2, 3, 1).numpy() for p in splits.values()
            ]
            stats = channel_stats(np.concatenate(adapted))
            mean, std = mean or stats[0], std or stats[1]
        mean, std = per_channel(mean, channels, "--mean"), per_channel(std, channels, "--std")
        for split, part in splits.items():
            if part.labels is None:
                raise TeacherError(f"eval dataset '{options.eval_dataset}' split '{split}' has no labels")
            x = teacher_input(part.images, channels, image_size)
            accs[split] = accuracy(model, normalise(x, mean, std), torch.from_numpy(part.labels))
    else:
        if mean is None or std is None:
            raise TeacherError("--mean and --std are required without --eval-dataset (no data to measure them on)")
        mean, std = per_channel(mean, channels, "--mean"), per_channel(std, channels, "--std")
        classes = classes or [str(i) for i in range(num_classes)]
    meta = TeacherMeta(
        arch=arch,
        num_classes=num_classes,
        classes=list(classes),
        image_size=image_size,
        channels=int(channels),
        mean=mean,
        std=std,
        dataset=options.eval_dataset or NO_EVAL_DATA,
        dataset_root=eval_root,
        val_accuracy=accs.get("val"),
        test_accuracy=accs.get("test"),
        weights_sha256=hashlib.sha256(stored).hexdigest(),
        format=fmt,
        has_eval_data=options.eval_dataset is not None,
        dataset_params=params if options.eval_dataset is not None else {},
        # None: decided from the eval dataset's kind, as for a trained teacher (it sets the students' temperature)
        fine_grained=options.fine_grained,
        imported_from=source,
    )
    storage.write_bytes(storage.join(out_uri, WEIGHTS), stored)
    storage.write_text(storage.join(out_uri, META), meta.model_dump_json(indent=2))
    log.info("imported teacher %s (%s) from %s", meta.teacher_id, fmt, source)
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, meta)


def check_classes(given: list[str] | None, data_classes: list[str], num_classes: int, dataset: str) -> list[str]:
    """The teacher's class names: `--classes`, else the eval data's; either way they must count `num_classes`."""
    if given is not None and data_classes and list(data_classes) != list(given):
        raise TeacherError(f"--classes {given[:5]} differ from eval dataset '{dataset}' classes {data_classes[:5]}")
    classes = list(given or data_classes)
    if len(classes) != num_classes:
        raise TeacherError(f"the teacher outputs {num_classes} classes, eval dataset '{dataset}' has {len(classes)}")
    return classes


def teacher_input(images: np.ndarray, channels: int, image_size: int) -> torch.Tensor:
    """uint8 NHWC eval images as the teacher's uint8 NCHW input (grey repeated, RGB to luma, as trials do)."""
    return to_teacher_input(torch.from_numpy(images), channels, image_size)
