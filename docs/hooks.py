"""MkDocs hook: links from a page to the source tree become links into the API reference.

On GitHub the pages under ``docs/`` link to code with relative paths, such as
``[`accept_key`](../rfc6455/handshake.py)`` or ``[the tests](../tests/test_frames.py)``.
The site has no such files, and a strict build fails on every one of them. Before each
page is rendered, this hook rewrites such links (and only on the site; the markdown files
are not changed):

- to a module of ``rfc6455``, ``chatd`` or ``tls``: a cross-reference to that module in
  the API reference, or to the object itself when the link text is a backticked name the
  module documents (``Connection.receive_data`` and ``encode_frame()`` work too); the
  ``autorefs`` plugin turns it into a link, and fails the strict build if it cannot;
- to any other file outside ``docs/`` (tests, benchmarks, the README, the Makefile), or
  an image there: plain text, with the file's path as code unless the text already names
  it. The site is not the repository; a dead link would be worse.

Links inside code blocks and code spans are left alone.
"""

from __future__ import annotations

import functools
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

#: The packages the API reference documents (the ``:::`` lines of docs/reference/).
PACKAGES = ("rfc6455", "chatd", "tls")

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
# A code span (skipped), or an inline link whose text may hold code spans; either may
# run over a line break within its paragraph.
_TOKEN = re.compile(
    r"(?P<code>(?P<ticks>`+)[\s\S]+?(?P=ticks))"
    r"|(?P<link>(?P<bang>!?)\[(?P<text>(?:[^\[\]`]|`[^`]*`)*)\]\((?P<target>[^()\s]+)\))"
)
_NAME = re.compile(r"`([A-Za-z_][\w.]*)(?:\(\))?`")


@functools.cache
def _reference_modules(docs_dir: str) -> frozenset[str]:
    """The modules that a ``::: module`` line of a reference page documents."""
    modules = set()
    for page in Path(docs_dir, "reference").glob("*.md"):
        modules.update(re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M))
    return frozenset(modules)


@functools.cache
def _package(name: str, root: str) -> Any:
    """The package as mkdocstrings sees it (griffe, with the ``#:`` comment extension)."""
    import griffe  # noqa: PLC0415 (the docs toolchain: importing this file needs none)

    extensions = griffe.load_extensions("griffe_sphinx")
    return griffe.load(name, search_paths=[root], extensions=extensions)


def _reference_target(identifier: str, root: str) -> str | None:
    """Where the reference documents ``identifier``, or None if it does not.

    mkdocstrings renders a public object with a docstring; a name a module imports from
    another (``rfc6455.Connection``) is documented where it is defined.
    """
    import griffe  # noqa: PLC0415 (as above)

    package, _, rest = identifier.partition(".")
    try:
        obj = _package(package, root)
        if rest:
            obj = obj[rest]
        if obj.is_alias:
            return _reference_target(obj.target_path, root)
    except (KeyError, ValueError, griffe.GriffeError):
        return None  # not there, or a name imported from outside the packages
    return identifier if obj.is_public and obj.docstring else None


def _module_of(repo_path: str) -> str | None:
    """``rfc6455/frames.py`` -> ``rfc6455.frames``; ``chatd/`` -> ``chatd``; else None."""
    path = repo_path.rstrip("/")
    if path in PACKAGES:
        return path
    if not path.endswith(".py") or path.split("/")[0] not in PACKAGES:
        return None
    module = path.removesuffix(".py").replace("/", ".")
    return module.removesuffix(".__init__")


def rewrite_link(
    text: str, target: str, page_path: str, docs_dir: str, root: str, *, image: bool = False
) -> str | None:
    """The replacement for the link ``[text](target)`` on ``page_path``, or None to keep it.

    ``page_path`` is the page's path under ``docs_dir``; ``root`` is the repository. An
    image from outside ``docs_dir`` becomes its alternative text and path.
    """
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = target.partition("#")[0]
    if not path:
        return None
    inside = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), path))
    if not inside.startswith("../"):
        return None  # a page or a file of the site: MkDocs checks those itself
    docs_rel = Path(docs_dir).resolve().relative_to(Path(root).resolve()).as_posix()
    repo_path = posixpath.normpath(posixpath.join(docs_rel, inside))
    module = _module_of(repo_path)
    if not image and module is not None and module in _reference_modules(docs_dir):
        name = _NAME.fullmatch(text.strip())
        if name is not None and not name.group(1).endswith(".py"):
            qualified = name.group(1)
            if not qualified.startswith(f"{module}."):
                qualified = f"{module}.{qualified}"
            found = _reference_target(qualified, root)
            if found is not None:
                return f"[{text}][{found}]"
        return f"[{text}][{module}]"
    shown = repo_path + ("/" if path.endswith("/") else "")
    if text.strip("` ") in (shown, repo_path):
        return f"`{shown}`"
    return f"{text} (`{shown}`)"


def rewrite_markdown(markdown: str, page_path: str, docs_dir: str, root: str) -> str:
    """Rewrite every link out of ``docs_dir`` in ``markdown`` (see the module docstring).

    The text is read a paragraph at a time, so that a link or a code span may wrap; fenced
    code blocks are copied as they are.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("link") is None:
            return match.group(0)
        image = bool(match["bang"])
        new = rewrite_link(match["text"], match["target"], page_path, docs_dir, root, image=image)
        return match.group(0) if new is None else new

    out: list[str] = []
    paragraph: list[str] = []
    fence: str | None = None
    for line in markdown.splitlines(keepends=True):
        opening = _FENCE.match(line)
        if fence is None and not opening and line.strip():
            paragraph.append(line)
            continue
        out.append(_TOKEN.sub(replace, "".join(paragraph)))
        paragraph.clear()
        if fence is None:
            fence = opening.group(1) if opening else None
        elif opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
            fence = None
        out.append(line)
    out.append(_TOKEN.sub(replace, "".join(paragraph)))
    return "".join(out)


def on_pre_build(*, config: MkDocsConfig) -> None:
    """MkDocs event: forget what an earlier build of ``mkdocs serve`` read."""
    _reference_modules.cache_clear()
    _package.cache_clear()


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """MkDocs event: rewrite the page's links to the source tree before it is rendered."""
    root = str(Path(config.config_file_path).parent)
    return rewrite_markdown(markdown, page.file.src_uri, config.docs_dir, root)
