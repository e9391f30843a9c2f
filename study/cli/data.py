"""`kd-study data build / preview / perturb / eval-splits / verify / ls`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from study.cli.console import console, progress_bars, user_errors

data_app = typer.Typer(no_args_is_help=True, help="Build, verify and list surrogate shards.")


@data_app.command("build")
def data_build(
    cards: Annotated[list[str], typer.Argument(help="Card names (bundled) or YAML paths.")],
    out: Annotated[str, typer.Option(help="Shard root: a folder or s3://bucket/prefix.")],
    count: Annotated[int | None, typer.Option(min=1, help="Images per surrogate (default: the card's).")] = None,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher URI: filters cards with 'balance'; mean/std for matched noise.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes for generating surrogates.")] = 1,
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
        with progress_bars() as progress:
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
                        + (
                            ""
                            if sel.complete
                            else f" [yellow]{sel.label()}: candidate ceiling {sel.candidates_budget} reached, "
                            f"classes {sel.short_classes()} below quotas {sel.quotas}[/]"
                        )
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
    deepen: Annotated[
        Literal["own_class_step", "confident"] | None,
        typer.Option(
            help="How kept images deepen: one step toward their own class (the authors'), or walk to confident."
        ),
    ] = None,
    deepen_iters: Annotated[
        int | None, typer.Option(help="Step cap of the deepening walk (--deepen confident).")
    ] = None,
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
    from study.teacher.checkpoint import load_meta

    with user_errors():
        knobs = dict(
            epsilon=epsilon,
            alpha=alpha,
            max_iters=max_iters,
            threshold=threshold,
            random_start=random_start,
            deepen=deepen,
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
        with progress_bars() as progress:
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
    from study.data.eval_splits import build_eval_shards
    from study.storage import resolve
    from study.teacher.checkpoint import load_meta

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
        if not storage.is_s3(base) and not Path(base).is_dir():
            raise FileNotFoundError(f"{base}: no such folder (give a shard root: a folder or s3://bucket/prefix)")
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
