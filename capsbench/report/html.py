"""Tiny static HTML helpers (no templates, no scripts, no timestamps: same input, same bytes)."""

from __future__ import annotations

from html import escape

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0 1.2rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, td:nth-child(2), th:nth-child(2) { text-align: left; }
tr.baseline td { color: #555; font-style: italic; background: #fafafa; }
tr.failed td { color: #a00000; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4rem 0 1rem; }
.note { color: #555; font-size: 0.9rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def esc(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def table(headers: list[str], rows: list[list], classes: list[str | None] | None = None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = (classes or [None] * len(rows))[i]
        attr = f' class="{esc(cls)}"' if cls else ""
        out.append(f"<tr{attr}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def image(src: str, alt: str) -> str:
    return f'<p><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(alt)}"></a></p>'
