"""Rendering of the report's sections as Markdown and as one self-contained HTML page.

A section is a title and a list of blocks (paragraph, note, table, image). The HTML page embeds every image as a
`data:image/png;base64` URI, holds its style inline and runs no script, so it opens from a mail attachment or an
S3 bucket as it does from disk; `report.md` refers to the PNG files beside it.
"""

from __future__ import annotations

import base64
import html as html_lib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Note:
    """A highlighted remark (partial results, too few surrogates, not data-free)."""

    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # cells already formatted as strings


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Image:
    file: str  # a PNG in the report folder
    alt: str


@dataclass
class Section:
    title: str
    blocks: list[Para | Note | Table | Code | Image] = field(default_factory=list)
    level: int = 2


def markdown_table(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[str(v).replace("|", "\\|") for v in row] for row in frame.values]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def markdown(title: str, sections: list[Section], folder: Path) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += ["#" * section.level + f" {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Para):
                out += [block.text, ""]
            elif isinstance(block, Note):
                out += [f"> **Note:** {block.text}", ""]
            elif isinstance(block, Table):
                out += [markdown_table(block.frame), ""]
            elif isinstance(block, Code):
                out += ["```", block.text, "```", ""]
            elif (folder / block.file).is_file():
                out += [f"![{block.alt}]({block.file})", ""]
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4C72B0; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; }
th { background: #f0f3f8; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: .5em .8em; }
.finding { font-size: 1.1em; background: #eef4ff; border-left: 4px solid #4C72B0; padding: .6em .9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code, pre { background: #f6f6f6; font-size: .85em; }
pre { padding: .6em; overflow-x: auto; white-space: pre-wrap; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html_lib.escape(alt)}">'


def html(title: str, sections: list[Section], folder: Path) -> str:
    esc = html_lib.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for section in sections:
        tag = f"h{section.level}"
        body.append(f"<{tag}>{esc(section.title)}</{tag}>")
        for block in section.blocks:
            if isinstance(block, Para):
                cls = ' class="finding"' if section.title == "Finding" else ""
                body.append(f"<p{cls}>{_inline(block.text)}</p>")
            elif isinstance(block, Note):
                body.append(f'<p class="note">{_inline(block.text)}</p>')
            elif isinstance(block, Table):
                body.append(block.frame.to_html(index=False, escape=True, border=0, na_rep=""))
            elif isinstance(block, Code):
                body.append(f"<pre>{esc(block.text)}</pre>")
            elif (folder / block.file).is_file():
                body.append(f"<p>{_img(folder / block.file, block.alt)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    """Escape, then render the two Markdown marks the report uses (`code` and **bold**) and keep line breaks."""
    out = html_lib.escape(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    return out.replace("\n", "<br>")
