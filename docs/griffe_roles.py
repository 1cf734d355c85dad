"""Griffe extension for the API reference: Sphinx roles in docstrings become Markdown.

bayescale's docstrings are written reST-style (``:func:`name```, ``:class:`~a.b.C```,
``:mod:`bayescale.laws```). Markdown shows those roles literally, so before rendering this
extension rewrites each one: a role whose target is an object the reference documents
becomes an autorefs cross-reference (``[`name`][a.b.name]``), anything else (another
library's object, a private helper) plain code. Targets are resolved in the scope of the
docstring's object, the way Sphinx would, and only documented targets are linked, so
``mkdocs build --strict`` never meets a cross-reference it cannot resolve.

Which modules the reference documents is read from the ``::: module`` lines of
``docs/api/*.md``. A reST literal-block marker (a line ending in ``::``) becomes ``:``.

A name a documented module re-exports (``bayescale.laws.LawFamily`` from ``bayescale.laws.base``)
is documented where it is defined, and not rendered a second time under the module that
re-exports it.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`<>]+?)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)
API_PAGES = Path(__file__).parent / "api"


def documented_modules() -> set[str]:
    modules = set()
    for page in API_PAGES.glob("*.md"):
        modules.update(re.findall(r"^::: *([\w.]+)", page.read_text(), flags=re.MULTILINE))
    return modules


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        self.root = pkg
        self.modules = documented_modules()
        for obj in self._walk(pkg):
            if obj.docstring is not None:
                text = ROLE.sub(lambda m, o=obj: self._replace(o, m.group(1) == "~", m.group(2).strip()), obj.docstring.value)
                obj.docstring.value = LITERAL_MARKER.sub(":", text)
        for obj in self._walk(pkg):
            if obj.is_module and obj.path in self.modules:
                for name, member in list(obj.members.items()):
                    if member.is_alias and self._documented_alias(member):
                        del obj.members[name]

    def _documented_alias(self, alias) -> bool:
        try:
            return self._documented(alias.final_target)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False

    def _walk(self, obj):
        yield obj
        for member in obj.members.values():
            if not member.is_alias and member.parent is obj:
                yield from self._walk(member)

    def _replace(self, scope, short: bool, name: str) -> str:
        title = name.rsplit(".", 1)[-1] if short else name
        target = self._target(scope, name)
        return f"[`{title}`][{target}]" if target else f"`{title}`"

    def _target(self, scope, name: str) -> str | None:
        """The canonical path of ``name`` seen from ``scope`` if the reference documents it."""
        head, _, rest = name.partition(".")
        try:
            path = scope.resolve(head) if head != self.root.name else head
        except (griffe.NameResolutionError, AttributeError):
            return None
        if rest:
            path = f"{path}.{rest}"
        try:
            obj = self.root if path == self.root.path else self.root[path.removeprefix(self.root.path + ".")]
            if obj.is_alias:
                obj = obj.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError, ValueError):
            return None
        return obj.path if self._documented(obj) else None

    def _documented(self, obj) -> bool:
        if obj.is_module:
            return obj.path in self.modules
        if obj.module.path not in self.modules or obj.name.startswith("_"):
            return False
        # defined directly in its module, or a public member of a documented class
        parent = obj.parent
        while parent is not None and not parent.is_module:
            if not parent.is_class or parent.name.startswith("_"):
                return False
            parent = parent.parent
        return True
