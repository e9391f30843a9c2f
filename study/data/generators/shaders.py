"""Procedural shader surrogates: OpenGL fragment programs rendered headless, many images per draw.

Follows Baradad et al., "Procedural Image Programs for Representation Learning" (NeurIPS 2022; the Shaders-1k
/ Shaders-21k collections), which Frank & Davis (CVPR 2025, arXiv:2411.12817) found among the best surrogates
for distillation. Programs render with moderngl on an EGL standalone context: Mesa llvmpipe on a CPU, the
GPU's driver where one is present. One context per process, created on first render (never at construction, so
a generator can be built in a driver process and used in workers). A process that has rendered must not fork
workers that render (Mesa's EGL does not survive fork): use 'spawn' / 'forkserver' there; it is an error.

Program convention (Shadertoy's, so Shadertoy programs work unchanged; ``glsl_folder`` converts Twigl programs to
it, see :mod:`shader_styles`). A program is one ``.glsl`` file that defines ``void mainImage(out vec4 fragColor,
in vec2 fragCoord)``; ``fragCoord`` is in pixels with the origin at the bottom left, and ``fragColor.rgb`` in
[0, 1] is the image (clamped). It may read these globals, set per image from the image's own random stream (never
declare them; ``uniform`` declarations of them and ``#version`` lines are removed):

- ``vec3 iResolution`` (width, height, 1) in pixels, ``float iTime`` uniform in [0, 60), ``vec4 iMouse`` (x, y
  uniform in the image in pixels, z = w = 0), ``int iFrame`` = 0, ``float iTimeDelta``, ``vec4 iDate`` = 0;
- ``vec4 iParams[2]``: eight floats uniform in [0, 1), for programs written for kd-study (scale, palette,
  ...).

A prelude of helpers prefixed ``kd_`` (hashes, value noise, fbm, a cosine palette driven by ``iParams[1]``,
rotation) is available. ``iChannel`` textures are not supported. Compile errors name the program's file.

To be fast, each draw renders a grid of tiles (up to 32 x 32) into one framebuffer: a tile's index selects its
image's random values from a float texture. Image ``i`` uses program ``(i // images_per_program) % n_programs``
(programs sorted by name; ``images_per_program`` defaults to 1, i.e. ``i % n_programs``) and its values depend
only on ``(seed, i)``, so images are block independent. Output can differ in the last bits between drivers
(llvmpipe vs a GPU); within one machine it is exact.

Many programs: llvmpipe keeps about 1,024 compiled fragment-shader variants per process and re-JITs (~0.1 s each)
beyond that, so the renderer keeps at most :data:`_CACHED_PROGRAMS` programs (least recently used ones are deleted)
and a call renders all of its images of one program in one pass. A collection of 1,000+ programs should set
``images_per_program`` (e.g. 16): a block of consecutive images then needs few programs, each compiled once.
Compiling is the cost, not drawing: ~12 ms to link a program, ~0.1 s for its first draw on llvmpipe.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from study.data.generators import shader_composer
from study.data.generators.registry import Generator, GeneratorError, ReferenceStats, image_rng, register_generator
from study.data.generators.shader_composer import composed_programs
from study.data.generators.shader_styles import EXTENSIONS, Style, StyleError, read_folder
from study.resources import bundled_dir

APT_PACKAGES = ["libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libgbm1", "libgles2"]
PIP_PACKAGES = ["moderngl", "glcontext"]
_INSTALL_HINT = (
    f"apt-get install -y {' '.join(APT_PACKAGES)} (headless EGL + Mesa) and pip install {' '.join(PIP_PACKAGES)}"
)
_MAX_TILES_PER_SIDE = 32
_MAX_FRAMEBUFFER_SIDE = 2048
_CACHED_FRAMEBUFFERS = 8
_CACHED_PROGRAMS = 1000  # below llvmpipe's 1,024 shader variants per process (more re-JIT on every draw)
_TIME_RANGE = 60.0
_VALUES_PER_IMAGE = 12  # time, mouse x, mouse y, spare, iParams[0..7]

_VERTEX = """#version 330 core
in vec2 kd_position;
void main() { gl_Position = vec4(kd_position, 0.0, 1.0); }
"""

_HEADER = """#version 330 core
out vec4 kd_fragColor;
uniform sampler2D kd_values;  // texel (k, tile) = k-th vec4 of the tile's image values
uniform int kd_grid;
uniform int kd_tile;
vec3 iResolution; float iTime; float iTimeDelta; int iFrame; vec4 iMouse; vec4 iDate; vec4 iParams[2];

const float KD_PI = 3.14159265358979;
float kd_hash11(float p) { p = fract(p * 0.1031); p *= p + 33.33; p *= p + p; return fract(p); }
float kd_hash21(vec2 p) {  // Hoskins, "Hash without Sine"
    vec3 q = fract(vec3(p.xyx) * 0.1031); q += dot(q, q.yzx + 33.33); return fract((q.x + q.y) * q.z);
}
vec2 kd_hash22(vec2 p) {
    vec3 q = fract(vec3(p.xyx) * vec3(0.1031, 0.1030, 0.0973)); q += dot(q, q.yzx + 33.33);
    return fract((q.xx + q.yz) * q.zy);
}
float kd_noise(vec2 p) {  // value noise in [0, 1]
    vec2 i = floor(p); vec2 f = fract(p); vec2 u = f * f * (3.0 - 2.0 * f);
    return mix(mix(kd_hash21(i), kd_hash21(i + vec2(1.0, 0.0)), u.x),
               mix(kd_hash21(i + vec2(0.0, 1.0)), kd_hash21(i + vec2(1.0, 1.0)), u.x), u.y);
}
float kd_fbm(vec2 p, int octaves) {
    float sum = 0.0; float amp = 0.5;
    for (int k = 0; k < octaves; k++) {
        sum += amp * kd_noise(p); p = mat2(1.6, 1.2, -1.2, 1.6) * p + 17.0; amp *= 0.5;
    }
    return sum;
}
mat2 kd_rot(float a) { float c = cos(a); float s = sin(a); return mat2(c, s, -s, c); }
vec3 kd_palette(float t) {  // Quilez's cosine palette: phases, frequency and saturation from iParams[1]
    vec3 phase = iParams[1].xyz + vec3(0.0, 0.33, 0.67);
    vec3 c = 0.5 + 0.5 * cos(2.0 * KD_PI * ((0.5 + iParams[1].w) * t + phase));
    float saturation = 0.35 + 0.65 * fract(7.13 * iParams[1].x + 3.7 * iParams[1].y);
    return mix(vec3(dot(c, vec3(0.299, 0.587, 0.114))), c, saturation);
}
"""

_MAIN = """
void main() {
    ivec2 pixel = ivec2(gl_FragCoord.xy);
    ivec2 tile = pixel / kd_tile;
    int index = tile.y * kd_grid + tile.x;
    vec4 a = texelFetch(kd_values, ivec2(0, index), 0);
    float side = float(kd_tile);
    iResolution = vec3(side, side, 1.0); iTime = a.x; iTimeDelta = 1.0 / 60.0; iFrame = 0;
    iMouse = vec4(a.yz * side, 0.0, 0.0); iDate = vec4(0.0);
    iParams[0] = texelFetch(kd_values, ivec2(1, index), 0);
    iParams[1] = texelFetch(kd_values, ivec2(2, index), 0);
    vec4 colour = vec4(0.0, 0.0, 0.0, 1.0);
    mainImage(colour, gl_FragCoord.xy - vec2(tile * kd_tile));
    kd_fragColor = vec4(clamp(colour.rgb, 0.0, 1.0), 1.0);
}
"""

_STRIP = re.compile(
    r"^\s*#version.*$|^\s*uniform\s+\w+\s+(iResolution|iTime|iTimeDelta|iFrame|iMouse|iDate|iParams)\b[^;]*;",
    re.MULTILINE,
)


def wrap_program(source: str) -> str:
    """A user program (the convention above) as a complete fragment shader for tiled rendering."""
    return _HEADER + "#line 1\n" + _STRIP.sub("", source) + _MAIN


class _Renderer:
    """The process's GL context, compiled programs and framebuffers; rebuilt after a fork."""

    def __init__(self) -> None:
        try:
            import moderngl
        except ImportError as error:
            raise GeneratorError(f"shader generators need moderngl: {_INSTALL_HINT} ({error})") from None
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as error:
            raise GeneratorError(
                f"shader generators could not create a headless EGL OpenGL context: {_INSTALL_HINT} ({error})"
            ) from None
        self.pid = os.getpid()
        quad = np.array([-1, -1, 1, -1, -1, 1, -1, 1, 1, -1, 1, 1], dtype="f4")
        self.vbo = self.ctx.buffer(quad.tobytes())
        self.programs: OrderedDict[str, Any] = OrderedDict()  # least recently used first
        self.framebuffers: dict[tuple[int, int], Any] = {}

    def compile(self, name: str, source: str) -> Any:
        """Compile and link ``source`` (the caller releases it); compile errors name the program."""
        try:
            return self.ctx.program(vertex_shader=_VERTEX, fragment_shader=wrap_program(source))
        except Exception as error:
            raise GeneratorError(f"shader program '{name}' does not compile: {error}") from None

    def program(self, name: str, source: str) -> Any:
        key = hashlib.sha256(source.encode()).hexdigest()
        if key in self.programs:
            self.programs.move_to_end(key)
            return self.programs[key]
        while len(self.programs) >= _CACHED_PROGRAMS:
            _, (old_program, old_vao) = self.programs.popitem(last=False)
            old_vao.release()
            old_program.release()  # frees its llvmpipe variants too
        program = self.compile(name, source)
        vao = self.ctx.vertex_array(program, [(self.vbo, "2f", "kd_position")])
        self.programs[key] = (program, vao)
        return self.programs[key]

    def framebuffer(self, width: int, height: int) -> Any:
        if (width, height) not in self.framebuffers:
            if len(self.framebuffers) >= _CACHED_FRAMEBUFFERS:
                for fbo in self.framebuffers.values():
                    fbo.release()
                self.framebuffers.clear()
            colour = self.ctx.texture((width, height), 4)
            self.framebuffers[(width, height)] = self.ctx.framebuffer(color_attachments=[colour])
        return self.framebuffers[(width, height)]

    def render(self, name: str, source: str, values: np.ndarray, tile: int) -> np.ndarray:
        """(n, 12) float32 image values -> (n, tile, tile, 3) uint8 renders, top row first."""
        program, vao = self.program(name, source)
        most = max(1, min(_MAX_TILES_PER_SIDE, _MAX_FRAMEBUFFER_SIDE // tile))
        out = np.empty((len(values), tile, tile, 3), dtype=np.uint8)
        for first in range(0, len(values), most * most):
            chunk = values[first : first + most * most]
            # a near-square grid just big enough for the chunk: unused tiles would cost a full render each
            grid = min(most, int(np.ceil(np.sqrt(len(chunk)))))
            rows = -(-len(chunk) // grid)
            data = np.ascontiguousarray(chunk, dtype="f4").tobytes()
            texture = self.ctx.texture((3, len(chunk)), 4, data=data, dtype="f4")
            texture.filter = (self.ctx.NEAREST, self.ctx.NEAREST)
            texture.use(location=0)
            # a program that reads no per-image value (nor the tile size) has these uniforms compiled out
            for uniform, value in (("kd_values", 0), ("kd_grid", grid), ("kd_tile", tile)):
                if program.get(uniform, None) is not None:
                    program[uniform].value = value
            fbo = self.framebuffer(grid * tile, rows * tile)
            fbo.use()
            fbo.viewport = (0, 0, grid * tile, rows * tile)
            vao.render()
            pixels = np.frombuffer(fbo.read(components=3, alignment=1), dtype=np.uint8)
            texture.release()
            # GL rows run bottom-up; tile index = row_from_bottom * grid + column
            tiles = pixels.reshape(rows, tile, grid, tile, 3).transpose(0, 2, 1, 3, 4).reshape(-1, tile, tile, 3)
            out[first : first + len(chunk)] = tiles[: len(chunk), ::-1]
        return out


_RENDERER: _Renderer | None = None


def renderer() -> _Renderer:
    """The process's renderer, created on first use.

    A process forked from one that already rendered cannot make a context of its own (Mesa's EGL state and
    llvmpipe's threads do not survive ``fork``; it hangs), so that is an error instead of a hang.
    """
    global _RENDERER
    if _RENDERER is not None and _RENDERER.pid != os.getpid():
        raise GeneratorError(
            f"shader rendering in process {os.getpid()}, forked from process {_RENDERER.pid} after that one "
            "had created an OpenGL context: start workers with the 'spawn' or 'forkserver' method, or render "
            "only in the workers"
        )
    if _RENDERER is None:
        _RENDERER = _Renderer()
    return _RENDERER


def image_values(seed: int, index: int) -> np.ndarray:
    """Image ``index``'s random values: iTime, iMouse (x, y in [0, 1)), a spare, iParams[0..7]."""
    values = image_rng(seed, index).random(_VALUES_PER_IMAGE)
    values[0] *= _TIME_RANGE
    return values


def read_programs(folder: Path) -> dict[str, str]:
    """``{stem: source}`` of every ``*.glsl`` file in ``folder`` (sorted by name)."""
    if not folder.is_dir():
        raise GeneratorError(f"shader folder '{folder}' does not exist or is not a directory")
    files = sorted(folder.glob("*.glsl"))
    if not files:
        raise GeneratorError(f"shader folder '{folder}' holds no .glsl programs")
    return {path.stem: path.read_text() for path in files}


def bundled_programs() -> dict[str, str]:
    """kd-study's own procedural programs, ``datasets/shaders/*.glsl``."""
    return read_programs(bundled_dir("datasets") / "shaders")


class _ShaderGenerator(Generator):
    """Renders ``self.sources`` (name -> source), image ``i`` with :meth:`program_of` ``(i)``."""

    sources: dict[str, str]

    class Params(Generator.Params):
        supersample: int = Field(1, ge=1, le=4, description="render k x k samples per pixel and average them")
        images_per_program: int = Field(
            1, ge=1, description="consecutive images per program: image i uses program (i // this) % n_programs"
        )

    def program_of(self, indices: np.ndarray) -> np.ndarray:
        """Program number (position in ``sources``) of each image index."""
        return (np.asarray(indices) // self.params.images_per_program) % len(self.sources)

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        ss = self.params.supersample
        names = list(self.sources)
        indices = np.arange(start, start + count)
        values = np.stack([image_values(seed, int(i)) for i in indices]) if count else np.zeros((0, 12))
        out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        gl = renderer() if count else None
        programs = self.program_of(indices)
        for p in np.unique(programs):  # program-major: each program's images in one pass
            name = names[int(p)]
            rows = np.flatnonzero(programs == p)
            if gl is None:
                continue
            images = gl.render(name, self.sources[name], values[rows].astype(np.float32), image_size * ss)
            if ss > 1:
                blocks = images.reshape(len(rows), image_size, ss, image_size, ss, 3).astype(np.float32)
                images = np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)
            out[rows] = images
        return out


def _library_digest() -> str:
    """Short hash of the bundled programs and the prelude: editing or adding a program changes the version."""
    try:
        programs = bundled_programs()
    except (FileNotFoundError, GeneratorError):
        return "missing"
    text = _HEADER + _MAIN + "".join(f"{name}\n{source}" for name, source in programs.items())
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _composer_digest() -> str:
    """Short hash of the composer's code and the prelude: any change to a composed program changes the version."""
    text = _HEADER + _MAIN + Path(shader_composer.__file__).read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@register_generator
class Shaders(_ShaderGenerator):
    name: ClassVar[str] = "shaders"
    version: ClassVar[str] = f"1-{_library_digest()}"

    class Params(_ShaderGenerator.Params):
        programs: list[str] | Literal["all"] = "all"

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        library = bundled_programs()
        if params.programs == "all":
            self.sources = library
            return
        unknown = [name for name in params.programs if name not in library]
        if unknown or not params.programs:
            raise GeneratorError(
                f"generator '{self.name}': programs: unknown {unknown or '(empty list)'}; known: {', '.join(library)}"
            )
        self.sources = {name: library[name] for name in sorted(set(params.programs))}


@register_generator
class ComposedShaders(_ShaderGenerator):
    """``programs`` procedural programs composed with random structure (:mod:`shader_composer`), offline."""

    name: ClassVar[str] = "composed_shaders"
    version: ClassVar[str] = f"1-{_composer_digest()}"

    class Params(_ShaderGenerator.Params):
        programs: int = Field(1000, ge=1, le=100_000, description="programs 0 .. programs-1 of the composer")
        images_per_program: int = Field(
            16, ge=1, description="consecutive images per program: image i uses program (i // this) % programs"
        )

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        self.sources = composed_programs(params.programs)


@register_generator
class GlslFolder(_ShaderGenerator):
    """Every program file in a folder: Shadertoy-style ``mainImage`` sources and Twigl programs (converted)."""

    name: ClassVar[str] = "glsl_folder"
    version: ClassVar[str] = "2"

    class Params(_ShaderGenerator.Params):
        path: str
        style: Style = Field("auto", description="the programs' style; auto detects it per file")

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        folder = Path(params.path).expanduser()
        if not folder.is_dir():
            raise GeneratorError(
                f"generator '{self.name}': path: shader folder '{folder}' does not exist or is not a directory"
            )
        try:
            programs = read_folder(folder, params.style)
        except StyleError as error:
            raise GeneratorError(f"generator '{self.name}': {error}") from None
        if not programs:
            raise GeneratorError(
                f"generator '{self.name}': path: shader folder '{folder}' holds no programs ({', '.join(EXTENSIONS)})"
            )
        self.sources = {name: source for name, (_, source) in programs.items()}
