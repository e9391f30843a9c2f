"""Procedural shader programs composed from the bundled families' building blocks: the paper's diversity offline.

Baradad et al. (NeurIPS 2022) render 1,089 (Shaders-1k) to 21k programs; the bundled library holds 32. Program ``k``
here (:func:`composed_program`) is drawn from its own random stream and differs in *structure*, not only in
constants: a chain of 0-3 domain transforms (rotation, fbm and sine domain warps, kaleidoscope and mirror folds,
polar and log-polar maps, swirls, inversions, repeats, Kali-style fold iterations), 1-3 scalar layers (fbm, ridged
noise, Voronoi F1 and edges, stripes, rings, checkers, SDF circle / box / hexagon grids, Truchet arcs, spirals,
wave interference, Julia iterations, metaballs, terraced noise), a way of combining them (mix, product, min, max,
difference, fract of the sum, masking), a colouring (one or two cosine palettes, hue-value, tinted grey, shading by
the second layer) and optional post steps (contour bands, posterising, vignette, inversion). Per-image variety still
comes from ``iTime``, ``iMouse`` and ``iParams`` (the renderer's per-image values), which every program reads.

Deterministic: ``composed_program(k)`` is a pure function of ``k`` (its own ``numpy`` stream), so program 17 is the
same text on every machine and in every version of this module that keeps :data:`COMPOSER_VERSION`; bump that
whenever the output changes (the generator's version records it).
"""

from __future__ import annotations

import numpy as np

COMPOSER_VERSION = 1
_STREAM = 0x5AD3  # separates program structure draws from any image stream
_WARPS = ("rotate", "fbm_warp", "sine_warp", "kaleido", "mirror", "polar", "log_polar", "swirl", "invert", "repeat",
          "kali", "shear")  # fmt: skip
_LAYERS = ("fbm", "ridged", "voronoi", "voronoi_edges", "stripes", "rings", "checker", "circles", "boxes", "hexes",
           "truchet", "spiral", "waves", "julia", "metaballs", "terraces")  # fmt: skip

# Helper functions a block may need, emitted once per program before mainImage (only those used).
_HELPERS = {
    "voronoi": """vec2 kd_c_voronoi(vec2 p, float jitter) {  // (F1, F2 - F1) of jittered grid points (Worley)
    vec2 g = floor(p); vec2 f = fract(p); float d1 = 8.0; float d2 = 8.0;
    for (int j = -1; j <= 1; j++) {
        for (int i = -1; i <= 1; i++) {
            vec2 o = vec2(float(i), float(j));
            vec2 r = o + 0.5 + jitter * (kd_hash22(g + o) - 0.5) - f;
            float d = dot(r, r);
            if (d < d1) { d2 = d1; d1 = d; } else if (d < d2) { d2 = d; }
        }
    }
    return vec2(sqrt(d1), sqrt(d2) - sqrt(d1));
}
""",
    "hex": """float kd_c_hex(vec2 p) {  // distance to the nearest hexagon edge (0 at edges, 0.5 at centres)
    vec2 s = vec2(1.0, 1.7320508);
    vec4 c = floor(vec4(p, p - vec2(0.5, 1.0)) / s.xyxy) + 0.5;
    vec4 h = vec4(p - c.xy * s, p - (c.zw + 0.5) * s);
    vec2 q = abs(dot(h.xy, h.xy) < dot(h.zw, h.zw) ? h.xy : h.zw);
    return 0.5 - max(dot(q, s * 0.5), q.x);
}
""",
    "hsv": """vec3 kd_c_hsv(float h, float s, float v) {
    vec3 k = clamp(abs(fract(h + vec3(0.0, 2.0 / 3.0, 1.0 / 3.0)) * 6.0 - 3.0) - 1.0, 0.0, 1.0);
    return v * mix(vec3(1.0), k, s);
}
""",
}


def _f(x: float) -> str:
    """A float literal GLSL accepts (always with a decimal point)."""
    return f"{x:.3f}"


class _Builder:
    """Draws one program's structure from its random stream; collects helper functions and body lines."""

    def __init__(self, k: int) -> None:
        self.rng = np.random.default_rng([_STREAM, k])
        self.helpers: list[str] = []
        self.lines: list[str] = []
        self.parts: list[str] = []

    def u(self, low: float, high: float) -> str:
        return _f(float(self.rng.uniform(low, high)))

    def param(self) -> str:
        """A random one of the eight per-image floats (iParams[0].x .. iParams[1].w)."""
        i = int(self.rng.integers(8))
        return f"iParams[{i // 4}].{'xyzw'[i % 4]}"

    def need(self, helper: str) -> None:
        if helper not in self.helpers:
            self.helpers.append(helper)

    # --- domain transforms: rewrite ``p`` (vec2) in place ---------------------------------------------------
    def warp(self) -> None:
        kind = str(self.rng.choice(_WARPS))
        self.parts.append(kind)
        add = self.lines.append
        if kind == "rotate":
            add(f"p = kd_rot({self.u(0, 6.283)} + {self.u(0.5, 3)} * {self.param()}) * p;")
        elif kind == "fbm_warp":
            o = int(self.rng.integers(2, 5))
            a = self.u(0.5, 3.0)
            add(f"p += {a} * (vec2(kd_fbm(p + vec2({self.u(0, 9)}, {self.u(0, 9)}) + 0.1 * iTime, {o}), "
                f"kd_fbm(p + vec2({self.u(0, 9)}, {self.u(0, 9)}), {o})) - 0.5);")  # fmt: skip
        elif kind == "sine_warp":
            add(f"p += {self.u(0.1, 0.8)} * sin(p.yx * {self.u(1, 5)} + vec2({self.u(0, 6)}, {self.u(0, 6)}) + iTime);")
        elif kind == "kaleido":
            n = int(self.rng.integers(3, 13))
            add("{ float a = atan(p.y, p.x); float r = length(p);")
            add(f"  float w = 6.2831853 / {n}.0; a = abs(mod(a + {self.u(0, 3)}, w) - 0.5 * w);")
            add("  p = r * vec2(cos(a), sin(a)); }")
        elif kind == "mirror":
            add(f"p = abs(p) - vec2({self.u(0, 1)}, {self.u(0, 1)});")
            if self.rng.random() < 0.5:
                add(f"p = kd_rot({self.u(0.2, 1.4)}) * p; p = abs(p) - {self.u(0.1, 0.8)};")
        elif kind == "polar":
            add(f"p = vec2(atan(p.y, p.x) * {int(self.rng.integers(1, 7))}.0 / 3.1415927, length(p) * {self.u(1, 5)});")
        elif kind == "log_polar":
            add(f"p = vec2(log(length(p) + 1e-3) * {self.u(1, 4)} - 0.2 * iTime, atan(p.y, p.x) * {self.u(0.5, 2.5)});")
        elif kind == "swirl":
            add(f"p = kd_rot({self.u(-3, 3)} * length(p) + {self.u(0, 1)} * {self.param()}) * p;")
        elif kind == "invert":
            add(f"p = p / max(dot(p, p), {self.u(0.05, 0.3)}) * {self.u(0.5, 2)};")
        elif kind == "repeat":
            add(f"p = (fract(p * {self.u(0.3, 1.5)} + 0.5) - 0.5) * {self.u(1.5, 4)};")
        elif kind == "kali":
            n = int(self.rng.integers(2, 7))
            add(f"for (int i = 0; i < {n}; i++) {{ p = abs(p) / max(dot(p, p), 0.05) - vec2({self.u(0.4, 1.1)}, "
                f"{self.u(0.4, 1.1)}) - 0.1 * {self.param()}; }}")  # fmt: skip
        else:  # shear
            add(f"p = mat2(1.0, {self.u(-1, 1)}, {self.u(-1, 1)}, 1.0) * p * vec2({self.u(0.5, 2)}, {self.u(0.5, 2)});")

    # --- scalar layers: an expression (float, roughly in [0, 1]) of ``q`` -----------------------------------
    def layer(self, index: int) -> str:
        kind = str(self.rng.choice(_LAYERS))
        self.parts.append(kind)
        q = f"q{index}"
        add = self.lines.append
        add(f"vec2 {q} = p * {self.u(0.5, 2.5)} + vec2({self.u(-3, 3)}, {self.u(-3, 3)});")
        v = f"v{index}"
        if kind == "fbm":
            add(f"float {v} = kd_fbm({q} + 0.2 * iTime, {int(self.rng.integers(2, 6))});")
        elif kind == "ridged":
            add(f"float {v} = pow(1.0 - abs(2.0 * kd_fbm({q}, {int(self.rng.integers(3, 6))}) - 1.0), {self.u(1, 4)});")
        elif kind in ("voronoi", "voronoi_edges"):
            self.need("voronoi")
            c = "x" if kind == "voronoi" else "y"
            scale = "1.0" if kind == "voronoi" else self.u(2, 6)
            add(f"float {v} = clamp(kd_c_voronoi({q} + iTime * 0.1, {self.u(0.3, 1)}).{c} * {scale}, 0.0, 1.0);")
        elif kind == "stripes":
            add(f"float {v} = 0.5 + 0.5 * sin(dot({q}, vec2({self.u(-1, 1)}, {self.u(-1, 1)})) * {self.u(3, 12)} "
                f"+ iTime + 6.2831 * {self.param()});")  # fmt: skip
        elif kind == "rings":
            add(f"float {v} = 0.5 + 0.5 * cos(length({q} - iMouse.xy / iResolution.xy) * {self.u(3, 14)} - iTime);")
        elif kind == "checker":
            add(f"float {v} = mod(floor({q}.x) + floor({q}.y), 2.0) * {self.u(0.5, 1)} "
                f"+ {self.u(0, 0.3)} * kd_noise({q} * 3.0);")  # fmt: skip
        elif kind == "circles":
            add(f"float {v} = smoothstep({self.u(0.1, 0.35)}, {self.u(0.36, 0.5)}, length(fract({q}) - 0.5 "
                f"+ 0.2 * (kd_hash22(floor({q}) + floor(iTime)) - 0.5)));")  # fmt: skip
        elif kind == "boxes":
            add(f"vec2 b{index} = abs(fract({q}) - 0.5) - vec2({self.u(0.1, 0.4)}, {self.u(0.1, 0.4)});")
            add(f"float {v} = smoothstep(-0.05, 0.05, length(max(b{index}, 0.0)) "
                f"+ min(max(b{index}.x, b{index}.y), 0.0)) * (0.5 + 0.5 * kd_hash21(floor({q})));")  # fmt: skip
        elif kind == "hexes":
            self.need("hex")
            add(f"float {v} = smoothstep(0.0, {self.u(0.05, 0.3)}, kd_c_hex({q}));")
        elif kind == "truchet":
            add(f"vec2 t{index} = fract({q}) - 0.5;")
            add(f"if (kd_hash21(floor({q}) + floor(iTime)) < 0.5) t{index}.x = -t{index}.x;")
            add(f"float {v} = smoothstep({self.u(0.04, 0.2)}, 0.0, min(abs(length(t{index} - 0.5) - 0.5), "
                f"abs(length(t{index} + 0.5) - 0.5)));")  # fmt: skip
        elif kind == "spiral":
            add(f"float {v} = fract(atan({q}.y, {q}.x) / 6.2831853 * {int(self.rng.integers(1, 9))}.0 "
                f"+ log(length({q}) + 1e-3) * {self.u(0.3, 2)} + 0.1 * iTime);")  # fmt: skip
        elif kind == "waves":
            add(f"float {v} = 0.0; for (int i = 0; i < {int(self.rng.integers(2, 6))}; i++) {{")
            add(f"  vec2 c = 3.0 * (kd_hash22(vec2(float(i), {self.u(0, 50)})) - 0.5);")
            add(f"  {v} += sin(length({q} - c) * {self.u(3, 10)} - iTime); }}")
            add(f"{v} = 0.5 + 0.25 * {v};")
        elif kind == "julia":
            n = int(self.rng.integers(12, 40))
            add(f"vec2 z{index} = {q} * 0.5; vec2 c{index} = {self.u(0.6, 0.8)} * vec2(cos(6.2831 * {self.param()}), "
                f"sin(6.2831 * {self.param()})); float {v} = 0.0;")  # fmt: skip
            z = f"z{index}"
            add(f"for (int i = 0; i < {n}; i++) {{ {z} = vec2({z}.x * {z}.x - {z}.y * {z}.y, 2.0 * {z}.x * {z}.y) "
                f"+ c{index}; if (dot({z}, {z}) > 16.0) break; {v} += 1.0; }}")  # fmt: skip
            add(f"{v} = {v} / {n}.0;")
        elif kind == "metaballs":
            n = int(self.rng.integers(3, 8))
            add(f"float {v} = 0.0; for (int i = 0; i < {n}; i++) {{")
            add(f"  vec2 c = 2.0 * (kd_hash22(vec2(float(i), {self.u(0, 50)}) + floor(iTime)) - 0.5);")
            add(f"  {v} += {self.u(0.05, 0.2)} / max(dot({q} - c, {q} - c), 1e-3); }}")
            add(f"{v} = smoothstep({self.u(0.5, 1)}, {self.u(1.1, 2.5)}, {v});")
        else:  # terraces
            add(f"float {v} = floor(kd_fbm({q}, 4) * {int(self.rng.integers(3, 10))}.0) / {self.u(3, 9)};")
        return v

    def combine(self, values: list[str]) -> str:
        v = values[0]
        for other in values[1:]:
            op = str(self.rng.choice(["mix", "mul", "min", "max", "diff", "fract", "mask"]))
            self.parts.append(op)
            v = {
                "mix": f"mix({v}, {other}, {self.u(0.2, 0.8)})",
                "mul": f"({v} * (0.3 + 0.7 * {other}))",
                "min": f"min({v}, {other})",
                "max": f"max({v}, {other})",
                "diff": f"abs({v} - {other})",
                "fract": f"fract({v} + {other})",
                "mask": f"mix({v}, 1.0 - {v}, step(0.5, {other}))",
            }[op]
        return v

    def colour(self, values: list[str]) -> None:
        add = self.lines.append
        kind = str(self.rng.choice(["palette", "two_palettes", "hue", "tinted_grey", "shaded"]))
        self.parts.append(kind)
        if kind == "palette":
            add(f"vec3 col = kd_palette(v * {self.u(0.5, 2.5)} + {self.u(0, 1)});")
        elif kind == "two_palettes":
            add(f"vec3 col = mix(kd_palette(v), kd_palette(v * {self.u(0.3, 1.5)} + 0.5), {values[-1]});")
        elif kind == "hue":
            self.need("hsv")
            add(f"vec3 col = kd_c_hsv(v * {self.u(0.3, 1.5)} + iParams[1].x, {self.u(0.4, 1)}, "
                f"{self.u(0.4, 0.8)} + 0.4 * {values[0]});")  # fmt: skip
        elif kind == "tinted_grey":
            add(f"vec3 col = v * mix(vec3(1.0), kd_palette({self.u(0, 1)}), {self.u(0.2, 0.8)});")
        else:  # shaded
            add(f"vec3 col = kd_palette(v * {self.u(0.5, 2)}) * (0.35 + 0.65 * {values[-1]});")

    def post(self) -> None:
        add = self.lines.append
        if self.rng.random() < 0.25:
            self.parts.append("bands")
            add(f"col *= 0.6 + 0.4 * smoothstep(0.0, 0.15, abs(fract(v * {int(self.rng.integers(3, 12))}.0) - 0.5));")
        if self.rng.random() < 0.2:
            self.parts.append("posterise")
            n = int(self.rng.integers(3, 8))
            add(f"col = floor(col * {n}.0 + 0.5) / {n}.0;")
        if self.rng.random() < 0.25:
            self.parts.append("vignette")
            add(f"col *= 1.0 - {self.u(0.2, 0.8)} * dot(uv, uv);")
        if self.rng.random() < 0.1:
            self.parts.append("invert")
            add("col = 1.0 - col;")


def composed_program(k: int) -> str:
    """Program ``k`` (``k >= 0``): a complete Shadertoy-convention source, a pure function of ``k``."""
    if k < 0:
        raise ValueError(f"composed program index must be >= 0, got {k}")
    b = _Builder(k)
    b.lines.append("vec2 uv = (fragCoord - 0.5 * iResolution.xy) / iResolution.y;")
    b.lines.append(
        f"vec2 p = uv * ({b.u(0.8, 2)} + {b.u(0.5, 2.5)} * iParams[0].x) + (iMouse.xy / iResolution.xy - 0.5);"
    )
    b.lines.append("p = kd_rot(6.2831 * iParams[0].y) * p;")
    for _ in range(int(b.rng.choice([0, 1, 1, 2, 2, 3]))):
        b.warp()
    values = [b.layer(i) for i in range(int(b.rng.choice([1, 2, 2, 3])))]
    b.lines.append(f"float v = {b.combine(values)};")
    b.colour(values)
    b.post()
    body = "\n".join(f"    {line}" for line in b.lines)
    helpers = "".join(_HELPERS[name] for name in b.helpers)
    return (
        f"// composed program {k} (kd-study shader composer v{COMPOSER_VERSION}): {' > '.join(b.parts)}\n"
        f"{helpers}void mainImage(out vec4 fragColor, in vec2 fragCoord) {{\n{body}\n"
        "    fragColor = vec4(col, 1.0);\n}\n"
    )


def composed_programs(n: int) -> dict[str, str]:
    """``{name: source}`` of programs ``0 .. n-1``, named ``composed_00000`` ... (sorted = index order)."""
    return {f"composed_{k:05d}": composed_program(k) for k in range(n)}
