"""Converting public shader collections' styles to kd-study's entry point (Shadertoy's ``mainImage``).

Baradad et al.'s Shaders-1k/21k hold programs from Shadertoy and from Twigl (twigl.app). Shadertoy programs
already define ``void mainImage(out vec4 fragColor, in vec2 fragCoord)`` and pass through (the renderer strips their
``uniform`` and ``#version`` lines). Twigl programs come in four modes (each also in a GLSL ES 3.0 and an MRT
variant), after the mode table in twigl's ``fragmen.js``:

- ``classic``: a whole shader with ``uniform vec2 resolution, mouse; uniform float time; uniform sampler2D
  backbuffer;`` and ``void main()`` writing ``gl_FragColor`` (ES 3.0: its own ``out vec4``);
- ``geek``: the same with the short names ``r, m, t, b`` (and ``f`` frame, ``s`` sound);
- ``geeker``: ``geek`` without the ``precision`` and ``uniform`` lines (ES 3.0 writes the implicit ``out vec4 o``);
- ``geekest``: only the body of ``main``, with ``FC`` for ``gl_FragCoord`` and helper functions (``snoise2D``,
  ``snoise3D``, ``snoise4D``, ``fsnoise``, ``fsnoiseDigits``, ``hsv``, ``rotate2D``, ``rotate3D``, ``PI``,
  ``PI2``). kd-study's helpers have twigl's names, signatures and ranges but are its own implementations (value
  noise, not Ashima's simplex noise), so a geekest program's noise looks alike, not identical.

:func:`to_entry_point` wraps a Twigl program in a ``mainImage`` that sets the globals it reads from the per-image
values (``resolution``/``r`` = the tile size, ``time``/``t`` = ``iTime``, ``mouse``/``m`` = ``iMouse`` in [0, 1],
``frame``/``f`` = 0, ``s`` = 0) and renames ``gl_FragCoord``/``gl_FragColor`` (a tile's own pixel, not the
framebuffer's). The backbuffer (``b``/``backbuffer``) is not the previous frame: feedback programs see a fixed
texture. Shaders-21k stores Twigl programs as ``fragments/<name>.fragment`` with the mode in
``modes/<name>.fragment`` (first line); :func:`read_folder` reads that mode, and otherwise :func:`detect_style`
guesses it from the text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

Style = Literal["auto", "shadertoy", "twigl_classic", "twigl_geek", "twigl_geeker", "twigl_geekest"]
STYLES: tuple[str, ...] = ("auto", "shadertoy", "twigl_classic", "twigl_geek", "twigl_geeker", "twigl_geekest")
EXTENSIONS = (".glsl", ".frag", ".fragment")

# known Twigl uniforms: name -> (type when the program does not declare it, value from the per-image globals)
_TWIGL_UNIFORMS = {
    "resolution": ("vec2", "iResolution.xy"),
    "mouse": ("vec2", "iMouse.xy / iResolution.xy"),
    "time": ("float", "iTime"),
    "frame": ("float", "float(iFrame)"),
    "r": ("vec2", "iResolution.xy"),
    "m": ("vec2", "iMouse.xy / iResolution.xy"),
    "t": ("float", "iTime"),
    "f": ("float", "float(iFrame)"),
    "s": ("float", "0.0"),
}
_SHORT_NAMES = ("r", "m", "t", "f", "s")

# twigl's geekest helpers (same names, signatures and ranges; kd-study's own value-noise implementations)
_GEEKEST_HELPERS = """
const float PI = 3.141592653589793;
const float PI2 = PI * 2.0;
float kd_t_hash31(vec3 p) { p = fract(p * 0.1031); p += dot(p, p.zyx + 31.32); return fract((p.x + p.y) * p.z); }
float kd_t_noise3(vec3 p) {
    vec3 i = floor(p); vec3 f = fract(p); f = f * f * (3.0 - 2.0 * f);
    float a = mix(mix(kd_t_hash31(i), kd_t_hash31(i + vec3(1, 0, 0)), f.x),
                  mix(kd_t_hash31(i + vec3(0, 1, 0)), kd_t_hash31(i + vec3(1, 1, 0)), f.x), f.y);
    float b = mix(mix(kd_t_hash31(i + vec3(0, 0, 1)), kd_t_hash31(i + vec3(1, 0, 1)), f.x),
                  mix(kd_t_hash31(i + vec3(0, 1, 1)), kd_t_hash31(i + vec3(1, 1, 1)), f.x), f.y);
    return mix(a, b, f.z);
}
float snoise2D(vec2 v) { return 2.0 * kd_noise(v) - 1.0; }
float snoise3D(vec3 v) { return 2.0 * kd_t_noise3(v) - 1.0; }
float snoise4D(vec4 v) {
    float w = floor(v.w); float u = fract(v.w); u = u * u * (3.0 - 2.0 * u);
    return mix(snoise3D(v.xyz + 17.0 * w), snoise3D(v.xyz + 17.0 * (w + 1.0)), u);
}
float fsnoise(vec2 c) { return kd_hash21(c * 12.9898 + 0.5); }
float fsnoiseDigits(vec2 c) { return kd_hash21(c * 1.29898 + 0.25); }
vec3 hsv(float h, float s, float v) {
    vec3 k = clamp(abs(fract(vec3(h) + vec3(0.0, 2.0 / 3.0, 1.0 / 3.0)) * 6.0 - 3.0) - 1.0, 0.0, 1.0);
    return v * mix(vec3(1.0), k, s);
}
mat2 rotate2D(float a) { return mat2(cos(a), sin(a), -sin(a), cos(a)); }
mat3 rotate3D(float angle, vec3 axis) {  // Rodrigues' rotation matrix about a (normalised) axis
    vec3 a = normalize(axis); float s = sin(angle); float c = cos(angle); float r = 1.0 - c;
    return mat3(a.x * a.x * r + c, a.y * a.x * r + a.z * s, a.z * a.x * r - a.y * s,
                a.x * a.y * r - a.z * s, a.y * a.y * r + c, a.z * a.y * r + a.x * s,
                a.x * a.z * r + a.y * s, a.y * a.z * r - a.x * s, a.z * a.z * r + c);
}
"""

_MAIN_IMAGE = re.compile(r"\bmainImage\s*\(")
_MAIN = re.compile(r"\bvoid\s+main\s*\(\s*(void)?\s*\)")
_VERSION = re.compile(r"^\s*#version[^\n]*", re.MULTILINE)
_PRECISION = re.compile(r"\bprecision\s+(lowp|mediump|highp)\s+\w+\s*;")
_UNIFORM = re.compile(r"\buniform\s+(\w+)\s+([\w\s,]+?)\s*;")
_OUT = re.compile(r"(\blayout\s*\([^)]*\)\s*)?\bout\s+vec4\s+(\w+)\s*;")


class StyleError(ValueError):
    """A source that cannot be converted (the message says why)."""


def detect_style(source: str) -> str:
    """The style of ``source``: ``shadertoy`` when it defines ``mainImage``, else a Twigl mode."""
    if _MAIN_IMAGE.search(source):
        return "shadertoy"
    if not _MAIN.search(source):
        return "twigl_geekest"
    declared = {name for _, names in _UNIFORM.findall(source) for name in re.split(r"\s*,\s*", names.strip())}
    if declared & {"resolution", "time", "mouse", "backbuffer"} or re.search(r"\boutColor\b", source):
        return "twigl_classic"
    if declared & {"r", "t", "m"}:
        return "twigl_geek"
    return "twigl_geeker"


def to_entry_point(source: str, style: str = "auto") -> str:
    """``source`` (in ``style``, or detected) as a program defining kd-study's ``mainImage`` entry point."""
    if style not in STYLES:
        raise StyleError(f"unknown shader style '{style}'; known: {', '.join(STYLES)}")
    if style == "auto":
        style = detect_style(source)
    if style == "shadertoy":
        if not _MAIN_IMAGE.search(source):
            raise StyleError("a Shadertoy-style program must define mainImage(out vec4, in vec2)")
        return source
    return _from_twigl(source, style.removeprefix("twigl_"))


def _from_twigl(source: str, mode: str) -> str:
    text = _PRECISION.sub("", _VERSION.sub("", source))
    text = re.sub(r"\b(lowp|mediump|highp)\s+", "", text)  # no-ops in GLSL 3.30; out of the way of parsing
    globals_: dict[str, str] = {}  # name -> type, the Twigl uniforms assigned per image
    kept_uniforms: list[str] = []

    def uniform(match: re.Match[str]) -> str:
        kind, names = match.group(1), [n for n in re.split(r"\s*,\s*", match.group(2).strip()) if n]
        known = [n for n in names if n in _TWIGL_UNIFORMS and not kind.startswith("sampler")]
        for name in known:
            globals_[name] = kind
        other = [n for n in names if n not in known]
        if other:  # samplers (backbuffer) and uniforms Twigl does not set stay uniforms (0 / texture unit 0)
            kept_uniforms.append(f"uniform {kind} {', '.join(other)};")
        return ""

    text = _UNIFORM.sub(uniform, text)
    outputs = [m.group(2) for m in _OUT.finditer(text)]
    text = _OUT.sub("", text)
    text = re.sub(r"\bgl_FragCoord\b", "kd_FragCoord", text)
    text = re.sub(r"\bgl_FragColor\b", "kd_FragColor", text)
    text = re.sub(r"\btexture2D\s*\(", "texture(", text)  # GLSL ES 1.0 name, absent from GLSL 3.30 core
    if mode == "geekest":
        if _MAIN.search(text):
            raise StyleError("a Twigl geekest program is the body of main, without 'void main()'")
        text = f"void kd_twigl_main() {{\n{text}\n}}"
    elif _MAIN.search(text):
        text = _MAIN.sub("void kd_twigl_main()", text, count=1)
    else:
        raise StyleError(f"a Twigl {mode} program must define void main()")
    if mode in ("geeker", "geekest"):  # Twigl declares these for the program
        for name in _SHORT_NAMES:
            globals_.setdefault(name, _TWIGL_UNIFORMS[name][0])
        kept_uniforms.append("uniform sampler2D b;")
    if "kd_FragColor" in text:
        colour = "kd_FragColor"
    elif outputs:
        colour = outputs[0]
    elif re.search(r"\bo0\b", text):
        colour, outputs = "o0", ["o0", "o1"]
    else:
        colour, outputs = "o", ["o"]
    lines = ["// converted from a Twigl " + mode + " program by kd-study", "vec4 kd_FragCoord;", "vec4 kd_FragColor;"]
    lines += [f"vec4 {name};" for name in outputs]
    lines += [f"{kind} {name};" for name, kind in globals_.items()]
    lines += kept_uniforms
    if mode == "geekest":
        lines += ["#define FC kd_FragCoord", _GEEKEST_HELPERS]
    assign = "".join(f"    {name} = {kind}({_TWIGL_UNIFORMS[name][1]});\n" for name, kind in globals_.items())
    main = (
        "void mainImage(out vec4 fragColor, in vec2 fragCoord) {\n"
        "    kd_FragCoord = vec4(fragCoord, 0.5, 1.0);\n"
        f"{assign}"
        f"    {colour} = vec4(0.0, 0.0, 0.0, 1.0);\n"
        "    kd_twigl_main();\n"
        f"    fragColor = {colour};\n"
        "}\n"
    )
    return "\n".join(lines) + "\n#line 1\n" + text + "\n" + main


def read_folder(folder: Path, style: str = "auto") -> dict[str, tuple[Path, str]]:
    """``{stem: (path, converted source)}`` of every program file in ``folder`` (``EXTENSIONS``), sorted by stem.

    With ``style: auto``, a Shaders-21k Twigl file ``fragments/<name>.fragment`` takes its mode from
    ``modes/<name>.fragment`` beside it; any other file's style is detected from its text.
    """
    files = sorted(path for path in folder.iterdir() if path.suffix in EXTENSIONS and path.is_file())
    out: dict[str, tuple[Path, str]] = {}
    for path in files:
        if path.stem in out:
            raise StyleError(f"two programs named '{path.stem}': {out[path.stem][0].name} and {path.name}")
        file_style = style
        mode_file = folder.parent / "modes" / path.name
        if style == "auto" and folder.name == "fragments" and mode_file.is_file():
            mode = (mode_file.read_text().split() or ["?"])[0]
            file_style = f"twigl_{mode}"
            if file_style not in STYLES:
                raise StyleError(f"{mode_file}: unknown Twigl mode '{mode}'")
        try:
            out[path.stem] = (path, to_entry_point(path.read_text(), file_style))
        except StyleError as error:
            raise StyleError(f"{path}: {error}") from None
    return dict(sorted(out.items()))
