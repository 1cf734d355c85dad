"""MkDocs hook: the public API table of ``docs/api/index.md``, generated from ``bayescale._PUBLIC``.

The page holds the marker ``<!-- public-api -->``; each public name becomes a row linking to the
object's entry in the reference, so a name added to the package's API shows up here by itself and
a name whose object the reference does not document fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import bayescale

MARKER = "<!-- public-api -->"


def public_api_table() -> str:
    rows = ["| name | defined in |", "|---|---|"]
    for name in bayescale.__all__:
        module, attribute = bayescale._PUBLIC[name]
        path = module if attribute is None else f"{module}.{attribute}"
        rows.append(f"| [`bayescale.{name}`][{path}] | `{path}` |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, public_api_table()) if MARKER in markdown else markdown
