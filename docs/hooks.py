"""MkDocs hooks.

- The public API table of ``docs/api/index.md``, generated from ``bayescale._PUBLIC``: the page
  holds the marker ``<!-- public-api -->``; each public name becomes a row linking to the object's
  entry in the reference, so a name added to the package's API shows up here by itself and a name
  whose object the reference does not document fails ``mkdocs build --strict``.
- Pipes in code spans inside tables are written ``\\|`` so that the pages read right on GitHub too;
  Python-Markdown already ignores pipes inside code spans and would show the backslash, so it is
  dropped there.
"""

from __future__ import annotations

import re

import bayescale

MARKER = "<!-- public-api -->"


def public_api_table() -> str:
    rows = ["| name | defined in |", "|---|---|"]
    for name in bayescale.__all__:
        module, attribute = bayescale._PUBLIC[name]
        path = module if attribute is None else f"{module}.{attribute}"
        rows.append(f"| [`bayescale.{name}`][{path}] | `{path}` |")
    return "\n".join(rows)


CODE_SPAN = re.compile(r"`[^`\n]*`")


def unescape_table_pipes(markdown: str) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and "\\|" in line:
            lines[i] = CODE_SPAN.sub(lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, public_api_table())
    return unescape_table_pipes(markdown)
