"""Images/s of every kd-study generator at 32x32 and 224x224, against baselines measured in the same run.

Window: the best of 2 timed calls producing the same image count, after each shader program has compiled.
Baseline: `np.random` filling the same uint8 array (the shader tiling line: one image per draw), same run.

Baseline for every generator: filling the same uint8 array with ``np.random`` (the floor cost of producing the
bytes at all). For the shader renderer also: the same programs drawn one image per draw instead of a grid of
tiles per draw (what tiling buys), and render throughput at 32 px with the program count: the 1,000 composed
programs (card ``composed_shaders``, 4 images per program so one pass covers all of them) against the 32 bundled
ones, warm (compiled) in both, plus the composed pass's cold rate (compiling and first drawing 1,000 programs).
Prints ``generate_<name>_<size>: ratio=X ...`` lines.

    python benchmarks/generate.py [--scale 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from study.data.generators import shaders as shader_module
from study.data.generators.registry import create_generator, list_generators
from study.data.generators.shaders import bundled_programs

# images per measurement at 32 px and at 224 px (small at 224: dead leaves is O(pixels x shapes))
COUNTS = {
    "gaussian_noise": (4096, 128),
    "uniform_noise": (4096, 128),
    "spectral_noise": (4096, 128),
    "dead_leaves": (1024, 16),
    "shaders": (4096, 256),
    "glsl_folder": (4096, 256),
    "composed_shaders": (4096, 256),
}


def best_rate(work: Callable[[], object], count: int, repeats: int = 2) -> float:
    """Images/s of the fastest of ``repeats`` runs (the least disturbed on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return count / best


def fill_rate(count: int, size: int) -> float:
    rng = np.random.default_rng(0)
    return best_rate(lambda: rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8), count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the image counts")
    args = parser.parse_args()
    params = {name: {} for name in list_generators()}
    params["glsl_folder"] = {"path": str(shader_module.bundled_dir("datasets") / "shaders")}
    n_programs = len(bundled_programs())
    for name in list_generators():
        generator = create_generator(name, params[name])
        generator.generate(0, 0, n_programs, 8)  # compile every shader program before timing
        for size, base_count in zip((32, 224), COUNTS.get(name, (1024, 32)), strict=True):
            count = max(n_programs, int(base_count * args.scale))
            rate = best_rate(lambda g=generator, n=count, s=size: g.generate(1, 0, n, s), count)
            fill = fill_rate(count, size)
            print(f"generate_{name}_{size}: ratio={rate / fill:.4f} gen={rate:.1f} img/s fill={fill:.1f} img/s")
    shaders = create_generator("shaders", {})
    for size, base_count in ((32, 2048), (224, 128)):
        count = max(n_programs, int(base_count * args.scale))
        tiled = best_rate(lambda n=count, s=size: shaders.generate(1, 0, n, s), count)
        saved = shader_module._MAX_TILES_PER_SIDE
        shader_module._MAX_TILES_PER_SIDE = 1  # one image per draw: the untiled baseline
        try:
            single = best_rate(lambda n=count, s=size: shaders.generate(1, 0, n, s), count)
        finally:
            shader_module._MAX_TILES_PER_SIDE = saved
        print(f"generate_shaders_tiling_{size}: ratio={tiled / single:.2f} tiled={tiled:.1f} img/s "
              f"one_per_draw={single:.1f} img/s")  # fmt: skip
    program_count_line(args.scale)


def program_count_line(scale: float) -> None:
    """Images/s at 32 px over 1,000 composed programs vs the 32 bundled ones (llvmpipe on a CPU)."""
    bundled = create_generator("shaders", {})
    n_bundled = len(bundled_programs())
    composed = create_generator("composed_shaders", {"programs": 1000, "images_per_program": 4})
    n_composed = len(composed.sources)
    count = max(n_composed * 4, int(4000 * scale))
    start = time.perf_counter()
    composed.generate(2, 0, count, 32)  # compiles and first-draws every program
    cold = count / (time.perf_counter() - start)
    warm = best_rate(lambda: composed.generate(2, 0, count, 32), count)
    bundled.generate(2, 0, n_bundled, 32)
    base = best_rate(lambda: bundled.generate(2, 0, count, 32), count)
    print(f"generate_shader_programs_32: ratio={warm / base:.2f} programs={n_composed} composed={warm:.1f} img/s "
          f"bundled_programs={n_bundled} bundled={base:.1f} img/s composed_cold={cold:.1f} img/s "
          f"(compile + first draw of {n_composed} programs: {count / cold:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
