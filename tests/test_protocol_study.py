"""Every byte example in docs/protocol-study.md is checked against the code.

The guide shows bytes in three forms, and each is machine-checked here, so that an
example cannot drift from what the code does. The conventions, for whoever edits it:

1. **Doctest blocks.** A fenced block with the info string ``python`` is a doctest: its
   ``>>> `` lines run and their output must match what the block shows (with
   ``doctest.ELLIPSIS``). Every ``python`` block must hold at least one example. The
   blocks run in document order in one shared namespace, like one Python session that
   reads the guide from top to bottom, so an import or a helper defined early serves the
   later blocks. Byte strings are shown with ``.hex(" ")``: ``'81 05 48 65 6c 6c 6f'``.
2. **Checked hex dumps.** A fenced ``text`` block whose lines start with hex bytes is a
   dump, and the line right above its opening fence must be an HTML comment
   ``<!-- check: EXPRESSION -->``. EXPRESSION is evaluated in the doctest namespace as it
   stands at that point of the guide and must give ``bytes``. The dump's bytes are the
   leading run of two-digit hex tokens of each line; what follows them on the line is an
   annotation, and a line that starts with anything else (drawing characters, spaces then
   drawing characters) adds no bytes. They must equal EXPRESSION exactly.
3. **Hex in the text.** Any other run of two or more hex bytes, in the prose (inline
   code like ``82 7e 01 00``) or in the annotations of a dump, must appear whole, between
   token boundaries, in a doctest block or in the bytes of a checked dump *of the same
   subsection* (the text under the same heading). Changing one byte of it therefore
   breaks a test, as does changing one byte of an example's output.

Links are checked too. ``[`name`](../rfc6455/file.py)`` must point to an existing file
that defines ``name`` (a function, a class, a module constant, or ``Class.member``);
``[`test_name`](../tests/test_file.py)`` to an existing file with ``def test_name``; a link
whose text is a file name must point to that file. Every test named in backticks must be
such a link. Other relative links, and their ``#anchors`` into markdown pages, must
resolve.

The regions between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` are
filled by ``docs/gen_diagrams.py``, not by hand: their contents are ignored here.
"""

from __future__ import annotations

import ast
import doctest
import re
import textwrap
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "protocol-study.md"

# Lower bounds, so that deleting examples (rather than fixing them) is noticed.
MIN_DOCTEST_BLOCKS = 43
MIN_DOCTEST_EXAMPLES = 220
MIN_CHECKED_DUMPS = 7
MIN_INLINE_HEX = 25
MIN_SOURCE_LINKS = 110
MIN_TEST_LINKS = 130

#: Each generated region, and a word of the heading of the section (or of the subsection)
#: it belongs in.
GENERATED_REGIONS = {"frame-header": "Framing", "connection-states": "TRANSITIONS"}

_FENCE_RE = re.compile(r"^\s*```(\S*)\s*$")
_CHECK_RE = re.compile(r"^<!-- check: (.+) -->$")
_HEX_BYTE_RE = re.compile(r"[0-9a-fA-F]{2}")
_INLINE_HEX_RE = re.compile(r"`((?:[0-9a-fA-F]{2} )+[0-9a-fA-F]{2})(?: \.\.\.)?`")
_HEX_RUN_RE = re.compile(r"(?<![\w.])[0-9a-fA-F]{2}(?: [0-9a-fA-F]{2})+(?![\w.])")
_SOURCE_LINK_RE = re.compile(r"\[`([^`]+)`\]\(\.\./((?:rfc6455|chatd|tls|bench)/[\w/]+\.py)\)")
_TEST_LINK_RE = re.compile(r"\[`([^`]+)`\]\(\.\./(tests/[\w/]+\.py)\)")
_TEST_NAME_RE = re.compile(r"`(test_\w+)`")
_ANY_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
_HEADING_RE = re.compile(r"^(#{1,6}) (.+)$", re.MULTILINE)


# --- reading the guide -----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block of the guide."""

    info: str  # the info string: "python", "text", ...
    text: str  # its lines, dedented
    line: int  # the line of its opening fence, counted from 1
    check: str | None  # the EXPRESSION of a ``<!-- check: ... -->`` right above it


@cache
def guide_lines() -> tuple[str, ...]:
    """The guide's lines, with the generated regions emptied (line numbers are kept)."""
    kept = []
    inside: str | None = None
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if inside is None:
            kept.append(line)
            match = re.fullmatch(r"<!-- generated:([a-z0-9-]+) -->", stripped)
            inside = match[1] if match else None
        elif stripped == f"<!-- /generated:{inside} -->":
            kept.append(line)
            inside = None
        else:
            kept.append("")
    assert inside is None, f"generated region {inside!r} is never closed"
    return tuple(kept)


@cache
def blocks() -> tuple[Block, ...]:
    """Every fenced block, in document order."""
    lines = guide_lines()
    found = []
    index = 0
    while index < len(lines):
        opening = _FENCE_RE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        assert index < len(lines), f"line {start + 1}: a fenced block is never closed"
        check = _CHECK_RE.match(lines[start - 1].strip()) if start else None
        text = textwrap.dedent("\n".join(lines[start + 1 : index]) + "\n")
        found.append(Block(opening[1], text, start + 1, check[1] if check else None))
        index += 1
    return tuple(found)


@cache
def prose() -> str:
    """The guide without its fenced blocks: where inline code spans and links are."""
    lines = list(guide_lines())
    for block in blocks():
        for offset in range(block.text.count("\n") + 2):
            lines[block.line - 1 + offset] = ""
    return "\n".join(lines)


def split_dump(text: str) -> tuple[bytes, str]:
    """A hex dump's bytes (the leading two-digit hex tokens of each line) and annotations."""
    data = bytearray()
    annotations = []
    for line in text.splitlines():
        tokens = line.split()
        count = 0
        while count < len(tokens) and _HEX_BYTE_RE.fullmatch(tokens[count]):
            data.append(int(tokens[count], 16))
            count += 1
        annotations.append(" ".join(tokens[count:]))
    return bytes(data), "\n".join(annotations)


def dump_bytes(text: str) -> bytes:
    """The bytes of a hex dump."""
    return split_dump(text)[0]


def normalize_hex(text: str) -> str:
    """Lower case, single spaces: the form in which hex strings are compared."""
    return " ".join(text.lower().split())


# --- running the examples --------------------------------------------------------------


@dataclass
class Run:
    """What running the guide's examples produced."""

    doctest_blocks: int = 0
    doctest_examples: int = 0
    checked_dumps: int = 0
    failures: list[str] = field(default_factory=list)
    #: The text of each doctest block and the bytes of each checked dump, normalized, by
    #: the line of the block's opening fence.
    verified: dict[int, str] = field(default_factory=dict)


@cache
def run_guide() -> Run:
    """Run every doctest block and evaluate every checked dump, in document order."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
    namespace: dict[str, object] = {"__name__": "protocol_study"}
    run = Run()
    for block in blocks():
        where = f"docs/protocol-study.md line {block.line}"
        if block.info == "python":
            test = parser.get_doctest(block.text, namespace, where, str(GUIDE), block.line)
            if not test.examples:
                run.failures.append(f"{where}: a python block without doctest examples")
                continue
            output: list[str] = []
            result = runner.run(test, out=output.append, clear_globs=False)
            namespace.update(test.globs)  # a DocTest works on a copy of the namespace
            if result.failed:
                run.failures.append("".join(output))
            run.doctest_blocks += 1
            run.doctest_examples += len(test.examples)
            run.verified[block.line] = normalize_hex(block.text)
            continue
        data = dump_bytes(block.text)
        if block.check is None:
            if len(data) >= 2:
                run.failures.append(f"{where}: a hex dump without a <!-- check: ... -->")
            if not block.info:
                run.failures.append(f"{where}: a fenced block without an info string")
            continue
        try:
            expected = eval(block.check, namespace)  # the guide's own expression
        except Exception as error:
            run.failures.append(f"{where}: check {block.check!r} raised {error!r}")
            continue
        if not isinstance(expected, bytes):
            run.failures.append(f"{where}: {block.check!r} is not bytes: {expected!r}")
        elif data != expected:
            run.failures.append(
                f"{where}: the dump shows\n  {data.hex(' ')}\n"
                f"but {block.check} is\n  {expected.hex(' ')}"
            )
        else:
            run.checked_dumps += 1
            run.verified[block.line] = data.hex(" ")
    return run


def test_every_example_matches_the_code() -> None:
    failures = run_guide().failures
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def test_the_examples_are_all_still_there() -> None:
    run = run_guide()
    assert run.doctest_blocks >= MIN_DOCTEST_BLOCKS
    assert run.doctest_examples >= MIN_DOCTEST_EXAMPLES
    assert run.checked_dumps >= MIN_CHECKED_DUMPS


def subsections() -> list[tuple[int, int]]:
    """The (first, last) line numbers of the text under each heading, counted from 1."""
    lines = guide_lines()
    starts = [0] + [n for n, line in enumerate(lines) if _HEADING_RE.fullmatch(line)]
    ends = [*starts[1:], len(lines)]
    return [(start + 1, end) for start, end in zip(starts, ends, strict=True)]


def test_every_hex_string_in_the_text_is_checked() -> None:
    assert len(_INLINE_HEX_RE.findall(prose())) >= MIN_INLINE_HEX
    text_lines = prose().split("\n")
    for block in blocks():
        if block.info != "python":  # a dump's annotations are text too
            annotations = split_dump(block.text)[1].split("\n")
            text_lines[block.line : block.line + len(annotations)] = annotations
    verified = run_guide().verified
    unchecked = []
    for first, last in subsections():
        shown = "\n".join(text for line, text in verified.items() if first <= line <= last)
        for hex_run in _HEX_RUN_RE.findall("\n".join(text_lines[first - 1 : last])):
            wanted = re.escape(normalize_hex(hex_run))
            if not re.search(rf"(?<![0-9a-f]){wanted}(?![0-9a-f])", shown):
                unchecked.append(f"line {first}-{last}: {hex_run}")
    assert not unchecked, f"hex that no doctest or checked dump nearby shows: {unchecked}"


def test_generated_regions_are_marked_once_in_their_sections() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for name, section in GENERATED_REGIONS.items():
        opening = f"\n<!-- generated:{name} -->\n"
        closing = f"\n<!-- /generated:{name} -->\n"
        assert text.count(opening) == 1, name
        assert text.count(closing) == 1, name
        start = text.index(opening)
        assert start < text.index(closing), name
        headings = _HEADING_RE.findall(text[:start])
        chapter = [heading for level, heading in headings if level == "##"][-1]
        assert section in chapter or section in headings[-1][1], (name, headings[-1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("81 05 48 65 6c 6c 6f\n", b"\x81\x05Hello"),
        ("81 85 37 fa    masked\n│  └── key\n   │ key\n7f 9f\n", bytes.fromhex("818537fa7f9f")),
        ("0x81 = 1000 0001: FIN=1\n", b""),
        ("01 03 48 65 6c     0x01: FIN=0; 'Hel'\n", bytes.fromhex("010348656c")),
    ],
)
def test_dump_bytes_reads_the_leading_hex_of_each_line(text: str, expected: bytes) -> None:
    assert dump_bytes(text) == expected


# --- links ------------------------------------------------------------------------------


@cache
def definitions(path: Path) -> frozenset[str]:
    """Names a module defines: functions, classes, constants and ``Class.member``."""

    def defined(node: ast.stmt) -> list[str]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return [node.name]
        if isinstance(node, ast.Assign):
            return [target.id for target in node.targets if isinstance(target, ast.Name)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        return []

    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names.update(defined(node))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                names.update(f"{node.name}.{name}" for name in defined(member))
    return frozenset(names)


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """The test functions a test module defines, at any indentation."""
    return frozenset(re.findall(r"^\s*def (test_\w+)", path.read_text("utf-8"), re.MULTILINE))


def wrong_links(links: list[tuple[str, str]], names_in: object) -> list[str]:
    """The links whose file is missing or does not define the name they show."""
    wrong = []
    for name, target in links:
        path = ROOT / target
        if not path.is_file():
            wrong.append(f"{target} does not exist")
        elif name.endswith(".py"):
            if not target.endswith(name):
                wrong.append(f"a link to {target} shows {name}")
        elif name not in names_in(path):  # type: ignore[operator]
            wrong.append(f"{name} is not defined in {target}")
    return wrong


def test_source_links_name_what_the_file_defines() -> None:
    links = _SOURCE_LINK_RE.findall(prose())
    assert len(links) >= MIN_SOURCE_LINKS
    wrong = wrong_links(links, definitions)
    assert not wrong, wrong


def test_test_links_name_tests_that_exist() -> None:
    text = prose()
    links = _TEST_LINK_RE.findall(text)
    assert len(links) >= MIN_TEST_LINKS
    wrong = wrong_links(links, defined_tests)
    assert not wrong, wrong
    unlinked = set(_TEST_NAME_RE.findall(text)) - {name for name, _ in links}
    assert not unlinked, f"tests named without a link to their file: {sorted(unlinked)}"


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation gone, "-" for " "."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a markdown page's headings (those in code blocks are not headings)."""
    text = re.sub(r"^```.*?^```", "", path.read_text("utf-8"), flags=re.MULTILINE | re.DOTALL)
    return frozenset(slug(heading) for _, heading in _HEADING_RE.findall(text))


def test_heading_anchors_are_the_same_on_github_and_the_docs_site() -> None:
    # Python-Markdown's toc extension collapses runs of spaces and hyphens, GitHub does
    # not: a heading where the two differ would break the guide's own links on one side.
    for _, heading in _HEADING_RE.findall(prose()):
        markdown = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())
        assert markdown == slug(heading), heading


def test_relative_links_resolve() -> None:
    missing = []
    for target in _ANY_LINK_RE.findall(prose()):
        if "://" in target or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        path = (GUIDE.parent / file_part).resolve() if file_part else GUIDE
        found = path.exists() and not (
            anchor and path.suffix == ".md" and anchor not in anchors(path)
        )
        if not found:
            missing.append(target)
    assert not missing, missing


def test_links_from_other_pages_into_the_guide_resolve() -> None:
    # Other pages (the tutorial, the README) link to sections of the guide by anchor:
    # renaming a heading must not break them.
    wanted = anchors(GUIDE)
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for anchor in re.findall(r"protocol-study\.md#([\w-]+)", text):
            if anchor not in wanted:
                broken.append(f"{page.relative_to(ROOT)}: #{anchor}")
    assert not broken, broken
