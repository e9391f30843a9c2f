"""`kd-study teacher train / import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from study.cli.console import console, progress_bars, user_errors

teacher_app = typer.Typer(no_args_is_help=True, help="Train and inspect teachers.")


@teacher_app.command("train")
def teacher_train(
    out: Annotated[str, typer.Option(help="Where to save weights.pt and meta.json (folder or s3:// URI).")],
    dataset: Annotated[str, typer.Option(help="Real source name (e.g. digits).")] = "digits",
    arch: Annotated[str, typer.Option(help="Model name from the registry.")] = "resnet20",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    image_size: Annotated[int, typer.Option(min=8)] = 32,
    seed: int = 0,
    dataset_root: Annotated[
        str | None,
        typer.Option(
            help="Folder of the dataset (for --dataset folder: class folders, split into train/val/test "
            "when it has no train/val/test folders)."
        ),
    ] = None,
) -> None:
    """Train a teacher on a labelled dataset and save it with its meta.json."""
    from study.config import SpecError, TeacherSpec, did_you_mean
    from study.models.names import ZOO_MODELS, is_known_arch
    from study.orchestrate.teacher_training import train_teacher
    from study.storage import resolve

    with user_errors():
        if not is_known_arch(arch):
            raise SpecError(f"--arch: {did_you_mean(arch, ZOO_MODELS, 'model')}, or a torchvision.models name")
        spec = TeacherSpec(dataset=dataset, arch=arch, epochs=epochs, image_size=image_size, seed=seed)
        if dataset_root is not None:
            spec = spec.model_copy(update={"dataset_root": resolve(dataset_root)})
        with progress_bars() as progress:
            task = progress.add_task(f"teacher {arch} on {dataset}", total=epochs)
            result = train_teacher(spec, resolve(out), on_epoch=lambda e, n, _l: progress.update(task, completed=e))
    m = result.meta
    console.print(
        f"teacher {m.teacher_id}: train {m.train_accuracy:.2%}, val {m.val_accuracy:.2%}, "
        f"test {m.test_accuracy:.2%} -> {resolve(out)}"
    )


@teacher_app.command("import")
def teacher_import(
    weights: Annotated[str, typer.Option(help="State dict (torch.save), TorchScript file or torch.export .pt2.")],
    out: Annotated[str, typer.Option(help="Where to save weights.pt and meta.json (folder or s3:// URI).")],
    arch: Annotated[
        str | None, typer.Option(help="Zoo or torchvision.models name (needed for a state dict), e.g. resnet18.")
    ] = None,
    num_classes: Annotated[int | None, typer.Option(min=1, help="Classes (default: read off the model).")] = None,
    classes: Annotated[Path | None, typer.Option(help="Text file of class names, one a line, in output order.")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="Input size the teacher expects.")] = None,
    mean: Annotated[
        str | None, typer.Option(help="Normalisation mean: one value or one per channel, e.g. 0.5,0.5,0.5.")
    ] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std, as --mean.")] = None,
    eval_dataset: Annotated[
        str | None, typer.Option(help="Labelled real source to evaluate on (e.g. folder, digits, cifar10).")
    ] = None,
    eval_root: Annotated[str | None, typer.Option(help="Root of the eval dataset (a folder of class folders).")] = None,
    fine_grained: Annotated[
        bool | None,
        typer.Option(
            "--fine-grained/--not-fine-grained",
            help="A fine-grained teacher (the paper's KD temperature 20); default: from the eval dataset.",
        ),
    ] = None,
) -> None:
    """Import a teacher trained elsewhere and save it with its meta.json, evaluated when eval data is given."""
    from study.orchestrate.teacher_import import ImportOptions, import_teacher, parse_floats
    from study.storage import resolve

    with user_errors():
        names = None
        if classes is not None:
            if not classes.is_file():
                raise FileNotFoundError(f"--classes: {classes} not found")
            names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
        options = ImportOptions(
            arch=arch,
            num_classes=num_classes,
            classes=names,
            image_size=image_size,
            mean=parse_floats(mean, "--mean") if mean else None,
            std=parse_floats(std, "--std") if std else None,
            eval_dataset=eval_dataset,
            eval_root=eval_root,
            fine_grained=fine_grained,
        )
        m = import_teacher(weights, resolve(out), options).meta
    accs = (
        f"val {m.val_accuracy:.2%}, test {m.test_accuracy:.2%}"
        if m.has_eval_data and m.val_accuracy is not None and m.test_accuracy is not None
        else "no eval data (search with search.metric: agreement)"
    )
    console.print(
        f"teacher {m.teacher_id} ({m.format}, {m.num_classes} classes, {m.image_size}px): {accs} -> {resolve(out)}"
    )
