"""The `kd-study` command line: parses, loads a spec, calls one library function, prints with rich."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="kd-study: which surrogate dataset should I distill on? Build surrogates, distill, rank (Frank & Davis, "
    "CVPR 2025).",
)
teacher_app = typer.Typer(no_args_is_help=True, help="Train and inspect teachers.")
data_app = typer.Typer(no_args_is_help=True, help="Build, verify and list surrogate shards.")
app.add_typer(teacher_app, name="teacher")
app.add_typer(data_app, name="data")
console = Console()
_DEBUG = {"on": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _DEBUG["on"] = debug
    # Tune forces a state snapshot at every checkpoint when num_to_keep is set; that is intended here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:  # MLflow and its migrations log at INFO through their own handlers
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known user errors print one clear message and exit 2; `--debug` shows the traceback instead."""
    from study.config import SpecError
    from study.data.real import SourceError
    from study.data.shards import ShardError
    from study.storage import StorageError
    from study.teacher import TeacherError

    try:
        yield
    except (SpecError, ShardError, TeacherError, StorageError, SourceError, FileNotFoundError) as err:
        if _DEBUG["on"]:
            raise
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    except ValueError as err:
        if _DEBUG["on"] or type(err).__module__.split(".")[0] != "study":
            raise
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None


class RichProgress:
    """ProgressSink on a rich Progress display."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.tasks = progress, {}

    def task(self, key: str, description: str, total: int | None) -> None:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total)

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        if key in self.tasks:
            self.progress.update(
                self.tasks[key],
                completed=completed,
                total=total or self.progress.tasks[self.tasks[key]].total,
            )


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _print_ranking(outcome) -> None:
    ranking = outcome.report.ranking
    show_surrogate = bool(len(ranking)) and bool((ranking["arm"] != ranking["surrogate"]).any())
    ranked = str(ranking["ranked_by"].iloc[0]) if len(ranking) else "test_acc"
    label = {"test_acc": "test acc", "agreement": "agreement"}[ranked]
    picked = next((c.removeprefix("best_") for c in ranking.columns if c.startswith("best_")), "val_acc")
    best = f"best trial by {picked}"
    bases = ["final seeds" if str(b).startswith("mean") else best for b in ranking.get("basis", [])]
    show_basis = len(set(bases)) > 1  # one basis for every arm goes in the caption: the table fits 80 columns
    caption = None
    if bases and not show_basis:
        caption = (
            f"{label}: mean of the final seeds, 95% t interval"
            if bases[0] == "final seeds"
            else f"{label}: the {bases[0]} (no final phase)"
        )
    title = f"Arms ranked by student {'test accuracy' if ranked == 'test_acc' else 'agreement'}"
    table = Table(title=title, caption=caption)
    columns = ["#", "arm", *(["surrogate"] if show_surrogate else []), label, "95% CI", *(["basis"] * show_basis)]
    for col in columns:
        table.add_column(col, justify="left" if col in ("arm", "surrogate", "basis") else "right", no_wrap=True)
    for (rank, row), basis in zip(ranking.iterrows(), bases, strict=True):
        cells = [str(rank), row["arm"], *([row["surrogate"]] if show_surrogate else [])]
        ci = "" if row["ci_low"] != row["ci_low"] else f"{100 * row['ci_low']:.1f}-{100 * row['ci_high']:.1f}%"
        cells += [f"{row[ranked]:.1%}", ci, *([basis] * show_basis)]
        table.add_row(*cells)
    console.print(table)
    if outcome.teacher.test_accuracy is not None:
        console.print(f"teacher test accuracy: {outcome.teacher.test_accuracy:.2%}")
    console.print(f"finding: {outcome.report.finding}", soft_wrap=True)
    report_at = outcome.report_uri or str(outcome.report.html.parent)
    console.print(f"report: [bold]{report_at}[/] (report.html, report.md, results.parquet)", soft_wrap=True)
    console.print(f"MLflow UI: [bold]mlflow ui --backend-store-uri {outcome.paths.tracking_uri}[/]", soft_wrap=True)


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Folder for everything the study writes.")] = Path("kd-study-quickstart"),
    spec: Annotated[Path | None, typer.Option(help="Use this study spec instead of the bundled quickstart.")] = None,
) -> None:
    """Run the whole study at small scale: teacher, surrogates, criteria, Ray Tune sweep, report."""
    from study.config import load_study
    from study.quickstart import quickstart as run_quickstart

    start = time.perf_counter()
    with user_errors():
        study_spec = load_study(spec) if spec else None
        with _progress() as progress:
            outcome = run_quickstart(out, study_spec, RichProgress(progress))
    _print_ranking(outcome)
    console.print(f"done in {time.perf_counter() - start:.0f} s")


StorageOption = Annotated[
    str | None, typer.Option("--storage", help="Study root: a folder or s3://bucket/prefix (sets storage.root).")
]
RootOption = Annotated[str | None, typer.Option("--root", help="Alias of --storage.")]
TrackingOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow store: sqlite:////abs/path.db or http://host:5000.")
]
RayAddressOption = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (e.g. auto).")]


def _load_spec(spec: str, storage: str | None, root: str | None, tracking_uri: str | None, ray_address: str | None):
    """The spec with the where-it-runs overrides applied (never its science: the study keeps its identity)."""
    from study.config import SpecError, apply_overrides, load_study
    from study.resources import resolve_spec_path

    if storage is not None and root is not None:
        raise SpecError("give --storage or its alias --root, not both")
    spec_path = resolve_spec_path(spec)
    study_spec = apply_overrides(
        load_study(spec_path), storage=storage or root, tracking_uri=tracking_uri, ray_address=ray_address
    )
    return spec_path, study_spec


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="Study spec: a YAML path or a bundled name (e.g. quickstart).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    ray_address: RayAddressOption = None,
    out: Annotated[Path | None, typer.Option(help="Also copy the report to this local folder.")] = None,
    build_workers: Annotated[int, typer.Option(help="Processes for generating surrogates.")] = 1,
) -> None:
    """Build what is missing, then run (or resume) the Ray Tune study and write the report.

    Exits 0 when every trial reached a result (diverged trials are results), 3 when trials failed (after the
    report is written; they are listed there), 2 on a user error found before anything ran.
    """
    from study.pipeline import run_study

    with user_errors():
        spec_path, study_spec = _load_spec(spec, storage, root, tracking_uri, ray_address)
        with _progress() as progress:
            outcome = run_study(
                study_spec,
                None,
                RichProgress(progress),
                build_workers=build_workers,
                spec_path=str(spec_path),
                report_out=out,
            )
    _print_ranking(outcome)
    if outcome.failed:
        console.print(f"[bold red]{outcome.failed} trial(s) failed[/] after their retries (listed in the report)")
        raise typer.Exit(3)


@app.command()
def report(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    ray_address: RayAddressOption = None,
    out: Annotated[Path | None, typer.Option(help="Also copy the report to this local folder.")] = None,
) -> None:
    """Rebuild the report (to <root>/report/<study name>) from the MLflow store alone."""
    from study.pipeline import open_tracker, publish_report, study_paths
    from study.sweep import total_trials
    from study.teacher import load_meta

    with user_errors():
        spec_path, study_spec = _load_spec(spec, storage, root, tracking_uri, ray_address)
        paths = study_paths(study_spec)
        meta = load_meta(paths.teacher)
        tracker = open_tracker(study_spec, paths, str(spec_path.resolve().parent))
        result, uri = publish_report(
            tracker, paths, meta, study_spec.name, out, total_trials(study_spec), metric=study_spec.search.metric
        )
    console.print(f"finding: {result.finding}", soft_wrap=True)
    console.print(
        f"report: [bold]{uri}[/] (report.html, report.md; {len(result.ranking)} arms)"
        + (f", copy in {out}" if out else ""),
        soft_wrap=True,
    )


@app.command()
def rank(
    spec: Annotated[str, typer.Argument(help="A finished study's spec (YAML path or bundled name).")],
    candidates: Annotated[list[str], typer.Option("--candidates", help="Candidate cards (names or YAML paths).")],
    root: Annotated[str | None, typer.Option(help="Override the spec's storage.root.")] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Images each candidate would supply (default: its card's count).")
    ] = None,
) -> None:
    """Score candidate surrogates from raw-pool criteria (teacher passes only), with a model fitted on the study."""
    from study.rank import rank_study_candidates

    with user_errors():
        # RankError: a clear message, exit 2
        scored, validation = rank_study_candidates(spec, root, candidates, count=count)
    table = Table(title="Candidate surrogates, predicted student test accuracy")
    for col in ("#", "card", "predicted acc", "class entropy (raw pool)"):
        table.add_column(col, justify="left" if col == "card" else "right", no_wrap=True)
    for i, row in scored.iterrows():
        table.add_row(str(i), row["card"], f"{row['predicted_test_acc']:.1%}", f"{row['crit_raw_class_entropy']:.3f}")
    console.print(table)
    console.print(validation.verdict(), soft_wrap=True)


@app.command()
def status(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Per arm and phase: trials done / running / failed / pending and the best search metric so far (MLflow)."""
    from study.pipeline import open_tracker, study_paths
    from study.status import study_status

    with user_errors():
        spec_path, study_spec = _load_spec(spec, storage, root, tracking_uri, ray_address)
        paths = study_paths(study_spec)
        tracker = open_tracker(study_spec, paths, str(spec_path.resolve().parent))
        rows = study_status(study_spec, tracker)
    if rows is None:
        console.print(f"study {tracker.name}: not started (no experiment in {paths.tracking_uri})")
        raise typer.Exit(1)
    table = Table(title=f"study {tracker.name}")
    best_col = "best val" if study_spec.search.metric == "val_acc" else "best agr"
    for col in ("arm", "phase", "done", "running", "failed", "pending", "stopped", best_col):  # fits 80 columns
        table.add_column(col, justify="left" if col in ("arm", "phase") else "right", no_wrap=True)
    for r in rows:
        best = f"{r.best:.2%}" if r.best is not None else "-"
        cells = (r.done, r.running, r.failed, r.pending, r.stopped_early)
        table.add_row(r.arm, r.phase, *(str(c) for c in cells), best)
    console.print(table)


@app.command()
def trial(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    arm: Annotated[str, typer.Option(help="Arm to distill on.")],
    root: Annotated[str | None, typer.Option(help="Override the spec's storage.root.")] = None,
) -> None:
    """Run one KD trial of an arm with the spec's default hyperparameters (no Ray Tune)."""
    from study.config import load_study
    from study.distill.trial import KDTrial, TrialPaths
    from study.pipeline import study_paths
    from study.resources import resolve_spec_path

    with user_errors():
        spec_path = resolve_spec_path(spec)
        study_spec = load_study(spec_path)
        paths = study_paths(study_spec, root)
        cards_dir = str(spec_path.resolve().parent)  # card paths in a spec are relative to its folder
        kd = KDTrial(study_spec, study_spec.arm(arm), TrialPaths(paths.teacher, paths.shards, cards_dir))

        def show(metrics: dict[str, float], _: dict) -> None:
            console.print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        kd.run(show)


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
    from study.config import TeacherSpec
    from study.storage import resolve
    from study.teacher import train_teacher

    with user_errors():
        spec = TeacherSpec(dataset=dataset, arch=arch, epochs=epochs, image_size=image_size, seed=seed)
        if dataset_root is not None:
            spec = spec.model_copy(update={"dataset_root": resolve(dataset_root)})
        with _progress() as progress:
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
    from study.storage import resolve
    from study.teacher_import import ImportOptions, import_teacher, parse_floats

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


@data_app.command("build")
def data_build(
    cards: Annotated[list[str], typer.Argument(help="Card names (bundled) or YAML paths.")],
    out: Annotated[str, typer.Option(help="Shard root: a folder or s3://bucket/prefix.")],
    count: Annotated[int | None, typer.Option(help="Images per surrogate (default: the card's).")] = None,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher URI: filters cards with 'balance'; mean/std for matched noise.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Generator processes.")] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. auto): one Ray task per shard.")
    ] = None,
) -> None:
    """Build surrogate cards into verified WebDataset shards."""
    from study.config import load_card
    from study.data.build import build_surrogate
    from study.data.mixture import resolve_mixture
    from study.resources import resolve_card_path
    from study.storage import resolve

    with user_errors():
        paths = [resolve_card_path(c, Path.cwd()) for c in cards]
        specs = [resolve_mixture(load_card(p), p.parent) for p in paths]
        with _progress() as progress:
            for card in specs:
                task = progress.add_task(f"surrogate {card.name}", total=None)
                scan_task = None

                def on_scan(scanned: int, kept: int, budget: int, name: str = card.name) -> None:
                    nonlocal scan_task
                    if scan_task is None:
                        scan_task = progress.add_task(f"teacher scan {name}", total=budget)
                    progress.update(scan_task, completed=scanned, description=f"teacher scan {name}: {kept} kept")

                result = build_surrogate(
                    card,
                    resolve(out),
                    count=count,
                    teacher=resolve(teacher) if teacher else None,
                    workers=workers,
                    ray_address=ray_address,
                    on_shard=lambda d, t, task=task: progress.update(task, completed=d, total=t),
                    on_scan=on_scan,
                )
                state = "reused" if result.reused else f"{result.shards_written} written, {result.shards_kept} kept"
                progress.console.print(f"{result.root}: {result.manifest.count} images, {state}")
                if (sel := result.manifest.selection) is not None:
                    if scan_task is not None:  # the scan stops early once every quota is full
                        progress.update(scan_task, total=sel.candidates_scanned)
                    rate = f"{sel.acceptance_rate:.2f}" if sel.acceptance_rate else "-"
                    progress.console.print(
                        f"  teacher selection: {sel.kept} kept of {sel.candidates_scanned} scanned "
                        f"(acceptance {rate}), per class {sel.achieved}"
                        + ("" if sel.complete else f" [yellow]below quotas {sel.quotas}: candidate budget spent[/]")
                    )


@data_app.command("preview")
def data_preview(
    roots: Annotated[list[str], typer.Argument(help="Surrogate folders (each holding manifest.json).")],
    out: Annotated[Path, typer.Option(help="Folder for the PNG grids (one <surrogate>.png each).")],
    count: Annotated[int, typer.Option(help="First images to show.", min=1)] = 64,
    scale: Annotated[int, typer.Option(help="Upscaling factor per image.", min=1)] = 4,
) -> None:
    """Write a PNG grid of each surrogate's first images, labelled with the teacher's prediction when stored."""
    from study.data.preview import write_preview
    from study.storage import resolve

    with user_errors():
        for root in roots:
            path = write_preview(resolve(root), out, count=count, scale=scale)
            console.print(f"{resolve(root)} -> {path}")


@data_app.command("perturb")
def data_perturb(
    source: Annotated[
        str,
        typer.Argument(
            help="A built surrogate folder (holding manifest.json), or a card name or "
            "YAML path whose surrogate is (or will be) built under --out."
        ),
    ],
    teacher: Annotated[str, typer.Option(help="Teacher URI whose decision boundary the images are pushed to.")],
    out: Annotated[str, typer.Option(help="Shard root for the derived surrogate: a folder or s3://bucket/prefix.")],
    ray_address: Annotated[str | None, typer.Option(help="Attack blocks as Ray tasks on this cluster.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="L-inf ball radius in [0, 1] pixel units.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Initial bold-driver step.")] = None,
    max_iters: Annotated[int | None, typer.Option(help="Step cap of the crossing walk.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Max-softmax threshold.")] = None,
    random_start: Annotated[bool | None, typer.Option(help="Uniform random start in the ball.")] = None,
    deepen_iters: Annotated[int | None, typer.Option(help="Step cap of the deepening walk.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Share of each source block attacked.")] = None,
    seed: int = 0,
) -> None:
    """Build the adversarially perturbed (derived) surrogate of a surrogate for one teacher."""
    from pydantic import ValidationError

    from study import storage
    from study.config import PerturbationSpec, SpecError, load_card
    from study.data.build import build_surrogate
    from study.data.perturb import build_perturbed
    from study.data.shards import MANIFEST
    from study.resources import resolve_card_path
    from study.teacher import load_meta

    with user_errors():
        knobs = dict(
            epsilon=epsilon,
            alpha=alpha,
            max_iters=max_iters,
            threshold=threshold,
            random_start=random_start,
            deepen_iters=deepen_iters,
            fraction=fraction,
        )
        try:
            spec = PerturbationSpec(mode="offline", **{k: v for k, v in knobs.items() if v is not None})
        except ValidationError as err:
            fields = "; ".join(
                (f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: " if e["loc"] else "") + e["msg"]
                for e in err.errors()
            )
            raise SpecError(f"invalid perturbation: {fields}") from None
        teacher_uri, out_root = storage.resolve(teacher), storage.resolve(out)
        source_root = storage.resolve(source)
        if not storage.exists(storage.join(source_root, MANIFEST)):
            card = load_card(resolve_card_path(source, Path.cwd()))
            meta = load_meta(teacher_uri)
            source_root = build_surrogate(
                card, out_root, reference_stats=(meta.mean, meta.std), teacher_id=meta.teacher_id
            ).root
        with _progress() as progress:
            task = progress.add_task(f"perturbing {source_root}", total=None)
            result = build_perturbed(
                source_root,
                teacher_uri,
                out_root,
                spec,
                seed=seed,
                ray_address=ray_address,
                on_shard=lambda d, t: progress.update(task, completed=d, total=t),
            )
    derived = result.manifest.card
    state = "reused" if result.reused else f"{result.shards_written} shards written, {result.shards_kept} kept"
    console.print(
        f"{result.root}: {result.manifest.count} images from {derived['successes']}/{derived['attacked']} "
        f"successes ({derived['success_rate']:.1%}), {state}"
    )


@data_app.command("eval-splits")
def data_eval_splits(
    teacher: Annotated[str, typer.Option(help="Teacher URI (folder or s3://) holding meta.json.")],
    out: Annotated[str, typer.Option(help="The study's eval root: <study root>/eval (folder or s3://).")],
) -> None:
    """Write the teacher's val and test splits as shards under OUT/<teacher id>/, from a machine that has its
    dataset: a study submitted to a cluster evaluates on them and never needs the dataset itself."""
    from study.data.eval_shards import build_eval_shards
    from study.storage import resolve
    from study.teacher import load_meta

    with user_errors():
        results = build_eval_shards(load_meta(resolve(teacher)), resolve(out))
    for split, result in results.items():
        state = "reused" if result.reused else "written"
        console.print(f"{result.root}: {split}, {result.manifest.count} images, {state}", soft_wrap=True)


@data_app.command("verify")
def data_verify(
    root: Annotated[str, typer.Argument(help="A surrogate folder (holding manifest.json).")],
) -> None:
    """Check every shard's sha256 and count against the manifest; exits non-zero naming a bad shard."""
    from study.data.shards import verify
    from study.storage import resolve

    with user_errors():
        manifest = verify(resolve(root))
    console.print(f"ok: {manifest.name}: {manifest.count} images in {len(manifest.shards)} shards")


@data_app.command("ls")
def data_ls(root: Annotated[str, typer.Argument(help="A shard root (folder or s3:// URI).")]) -> None:
    """List the surrogates under a shard root."""
    from study import storage
    from study.data.shards import MANIFEST, read_manifest

    with user_errors():
        base = storage.resolve(root)
        table = Table("surrogate", "kind", "images", "size", "shards", "teacher")
        for name in storage.list_names(base):
            if storage.exists(storage.join(base, name, MANIFEST)):
                m = read_manifest(storage.join(base, name))
                table.add_row(
                    m.name,
                    m.kind,
                    str(m.count),
                    f"{m.image_size}x{m.image_size}x{m.channels}",
                    str(len(m.shards)),
                    m.teacher or "",
                )
    console.print(table)


# `kd-study submit / jobs / logs / stop` live in their own module.
from study.cli_jobs import register as register_job_commands  # noqa: E402

register_job_commands(app, console, user_errors, _DEBUG)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
