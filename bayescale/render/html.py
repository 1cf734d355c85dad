"""Page assembly: the report's Jinja2 templates (``bayescale/render/templates``), autoescaped.

Every value reaches a page through ``{{ ... }}`` and is HTML-escaped there (a domain called
``<script>`` is shown, not run); markup lives only in the templates. Undefined names are
errors (:class:`jinja2.StrictUndefined`), so a view model that lacks a key fails loudly
instead of leaving a gap on the page.
"""

from __future__ import annotations

import functools

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

REPORT_TEMPLATE = "report.html.j2"
# select_autoescape() alone escapes only names ending in .html/.htm/.xml, not "report.html.j2".
AUTOESCAPE_EXTENSIONS = ("html", "htm", "xml", "html.j2")


@functools.cache
def environment() -> Environment:
    """The Jinja2 environment of the report templates (one per process)."""
    return Environment(
        loader=PackageLoader("bayescale.render"),
        autoescape=select_autoescape(enabled_extensions=AUTOESCAPE_EXTENSIONS, default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context) -> str:
    """Render one template (a page or a section partial) with ``context``."""
    return environment().get_template(template).render(**context)


def render_report(view: dict) -> str:
    """The report page from its view model (:func:`bayescale.render.report.build_view`)."""
    return render(REPORT_TEMPLATE, **view)
