"""Tests for the documentation site: the generated figures and the strict MkDocs build.

``docs/gen_diagrams.py`` draws the frame header from ``rfc6455.frames.HEADER_FIELDS`` and
the state machine from ``rfc6455.connection.TRANSITIONS``; these tests check that the
committed figures are what it draws now, that the drawings are right (bit columns, every
transition), and that its marked regions behave. ``docs/hooks.py`` rewrites links to the
source tree for the site; its rules are checked on literal markdown. Finally the whole
site must build with ``mkdocs build --strict``: skipped when MkDocs is not installed,
except under CI (``CI=true``), where a missing tool is a failure.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from rfc6455 import frames
from rfc6455.connection import TRANSITIONS, State
from rfc6455.frames import HEADER_FIELDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SVG_NS = "{http://www.w3.org/2000/svg}"


def load(name: str) -> ModuleType:
    """Import ``docs/<name>.py`` (the docs folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = load("gen_diagrams")
hooks = load("hooks")


def require(module: str) -> None:
    """Skip, loudly, when ``module`` is not installed; under CI, fail instead."""
    if importlib.util.find_spec(module) is not None:
        return
    message = f"{module} is not installed (pip install -e '.[docs]')"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must build the docs")
    pytest.skip(message)


def test_a_missing_docs_tool_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must build the docs"):
        require("no_such_module_for_the_docs")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="is not installed"):
        require("no_such_module_for_the_docs")


# --- the committed figures are current -----------------------------------------------------


def test_generated_figures_are_current() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, content in gen.outputs(DOCS).items()
        if not path.exists() or path.read_text(encoding="utf-8") != content
    ]
    assert stale == [], f"run `make docs` to regenerate {stale}"


def test_check_mode_passes_on_the_committed_docs(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--check"]) == 0
    assert capsys.readouterr().err == ""


# --- the frame header ----------------------------------------------------------------------


def figure_lines() -> list[str]:
    return gen.frame_header_layout().splitlines()


def test_ruler_numbers_32_bits() -> None:
    tens, units = figure_lines()[:2]
    assert tens == " 0                   1                   2                   3"
    assert units == " " + " ".join(str(bit % 10) for bit in range(32))


def test_every_box_line_is_32_bits_wide() -> None:
    for line in figure_lines()[2:]:
        assert len(line) == 2 * 32 + 1, line
        assert line[0] in "+|" and line[-1] in "+|", line


def test_first_row_has_the_rfc_bit_widths() -> None:
    lines = figure_lines()
    top = lines[2]
    # Section 5.2: FIN, RSV1-3 one bit each, opcode 4, MASK 1, payload len 7, then the
    # first 16 bits of the extended payload length.
    edges = [column for column, char in enumerate(top) if char == "+"]
    widths = [(right - left) // 2 for left, right in itertools.pairwise(edges)]
    assert widths == [1, 1, 1, 1, 4, 1, 7, 16]
    names = lines[3]
    assert names[1] == "F"  # FIN is bit 0
    assert [names[column] for column in (3, 5, 7)] == ["R", "R", "R"]
    assert names[8:17] == "| opcode|"  # bits 4-7
    assert names[16:19] == "|M|"  # bit 8
    assert names[18:33] == "| Payload len |"  # bits 9-15
    assert "".join(line[1] for line in lines[3:6]) == "FIN"
    assert "".join(line[3] for line in lines[3:7]) == "RSV1"
    assert "".join(line[17] for line in lines[3:7]) == "MASK"


def test_every_field_is_labelled_at_its_first_bit() -> None:
    lines = figure_lines()
    rows: list[list[str]] = []  # the text lines of each row of boxes
    for line in lines[2:]:
        if line.startswith("+"):
            rows.append([])
        else:
            rows[-1].append(line)
    start = 0
    for field in HEADER_FIELDS:
        row, bit = divmod(start, 32)
        right = min(2 * (bit + max(field.widths)), 64)
        cells = [line[2 * bit : right + 1] for line in rows[row]]
        assert all(cell[0] == "|" and cell[-1] == "|" for cell in cells), (field.name, cells)
        if max(field.widths) == 1:
            assert "".join(cell[1] for cell in cells).startswith(field.name), field.name
        else:
            assert cells[0].strip("| ") == field.name, (field.name, cells)
        start += max(field.widths)
    assert start == 14 * 8  # the widest header: 2 bytes, a 64-bit length, a masking key


def test_figure_agrees_with_the_rfc_figure_in_the_frames_docstring() -> None:
    assert frames.__doc__ is not None
    rfc = frames.__doc__.split("```\n")[1].splitlines()
    ours = figure_lines()
    assert ours[:3] == rfc[:3]  # the ruler and the first row's boxes
    assert ours[7] == rfc[7]  # a field that goes on into the next row: a dashed line
    assert ours[-1].startswith("+-------------------------------+ - - -")


def test_a_variable_field_shows_its_widths() -> None:
    assert "(16/64)" in gen.frame_header_layout()
    assert "(32)" in gen.frame_header_layout()


# --- the state machine ---------------------------------------------------------------------


def test_transition_table_lists_every_transition() -> None:
    rows = gen.transition_table().splitlines()
    assert rows[:2] == ["| state | trigger | next state |", "| --- | --- | --- |"]
    assert rows[2:] == [
        f"| {state.value} | {trigger.value} | {next_state.value} |"
        for (state, trigger), next_state in TRANSITIONS.items()
    ]


def test_svg_has_every_state_and_every_transition() -> None:
    svg = ET.fromstring((DOCS / gen.STATES_SVG).read_text(encoding="utf-8"))
    assert svg.tag == SVG_NS + "svg"
    states = {
        group.get("id"): "".join(group.itertext()).strip()
        for group in svg.iter(SVG_NS + "g")
        if group.get("class") == "state"
    }
    assert states == {f"state-{state.value}": state.value for state in State}
    arrows: dict[tuple[str | None, str | None], list[str]] = {}
    for group in svg.iter(SVG_NS + "g"):
        if group.get("class") == "transition":
            assert group.find(SVG_NS + "path") is not None
            labels = [text.text or "" for text in group.iter(SVG_NS + "text")]
            arrows[group.get("data-from"), group.get("data-to")] = labels
    for (state, trigger), next_state in TRANSITIONS.items():
        labels = arrows[state.value, next_state.value]
        assert any(trigger.value in label.split(", ") for label in labels), (
            state,
            trigger,
            labels,
        )
    pairs = {(state.value, next_state.value) for (state, _), next_state in TRANSITIONS.items()}
    assert set(arrows) == pairs


# --- marked regions ------------------------------------------------------------------------


def make_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "howto").mkdir(parents=True)
    (docs / "guide.md").write_text(
        "# Guide\n\nBefore.\n\n"
        "<!-- generated:frame-header -->\nstale\n<!-- /generated:frame-header -->\n\n"
        "Between.\n\n"
        "<!-- generated:connection-states -->\n<!-- /generated:connection-states -->\n"
        "After.\n",
        encoding="utf-8",
    )
    (docs / "howto" / "page.md").write_text(
        "<!-- generated:connection-states -->\n<!-- /generated:connection-states -->\n",
        encoding="utf-8",
    )
    (docs / "plain.md").write_text("# No markers\n", encoding="utf-8")
    return docs


def test_regions_are_filled_and_the_text_around_them_kept(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    assert gen.main(["--docs-dir", str(docs)]) == 0
    guide = (docs / "guide.md").read_text(encoding="utf-8")
    assert guide == (
        "# Guide\n\nBefore.\n\n"
        "<!-- generated:frame-header -->\n```text\n"
        + gen.frame_header_layout()
        + "```\n<!-- /generated:frame-header -->\n\n"
        "Between.\n\n"
        "<!-- generated:connection-states -->\n"
        "![Connection states](diagrams/connection-states.svg)\n\n"
        + gen.transition_table()
        + "<!-- /generated:connection-states -->\nAfter.\n"
    )
    page = (docs / "howto" / "page.md").read_text(encoding="utf-8")
    assert "![Connection states](../diagrams/connection-states.svg)" in page
    assert (docs / "diagrams" / "connection-states.svg").exists()
    assert (docs / "plain.md").read_text(encoding="utf-8") == "# No markers\n"
    # A second run changes nothing, and --check agrees.
    assert gen.main(["--docs-dir", str(docs), "--check"]) == 0
    assert gen.outputs(docs)[docs / "guide.md"] == guide


def test_check_mode_reports_drift_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = make_docs(tmp_path)
    before = (docs / "guide.md").read_text(encoding="utf-8")
    assert gen.main(["--docs-dir", str(docs), "--check"]) == 1
    assert (docs / "guide.md").read_text(encoding="utf-8") == before
    assert not (docs / "diagrams").exists()
    err = capsys.readouterr().err
    assert "guide.md is out of date" in err
    assert "connection-states.svg is out of date" in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<!-- generated:nope -->\n<!-- /generated:nope -->\n", "unknown generated region"),
        ("<!-- generated:frame-header -->\nno end\n", "without <!-- /generated:frame-header"),
    ],
)
def test_broken_markers_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    (tmp_path / "page.md").write_text(text, encoding="utf-8")
    assert gen.main(["--docs-dir", str(tmp_path)]) == 2
    assert problem in capsys.readouterr().err
    assert (tmp_path / "page.md").read_text(encoding="utf-8") == text


# --- the link hook -------------------------------------------------------------------------


def rewrite(markdown: str, page: str = "protocol-study.md") -> str:
    return str(hooks.rewrite_markdown(markdown, page, str(DOCS), str(ROOT)))


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        # A documented name of the linked module: a cross-reference to it.
        (
            "[`accept_key`](../rfc6455/handshake.py)",
            "[`accept_key`][rfc6455.handshake.accept_key]",
        ),
        (
            "[`Connection.receive_data`](../rfc6455/connection.py#L10)",
            "[`Connection.receive_data`][rfc6455.connection.Connection.receive_data]",
        ),
        (
            "[`encode_frame()`](../rfc6455/frames.py)",
            "[`encode_frame()`][rfc6455.frames.encode_frame]",
        ),
        # A name imported from elsewhere: where it is defined.
        ("[`Opcode`](../rfc6455/frames.py)", "[`Opcode`][rfc6455.codes.Opcode]"),
        # A private or undocumented name, other text, or the package: the module.
        ("[`_fail`](../rfc6455/connection.py)", "[`_fail`][rfc6455.connection]"),
        ("[frames.py](../rfc6455/frames.py)", "[frames.py][rfc6455.frames]"),
        ("[`http.py`](../rfc6455/http.py)", "[`http.py`][rfc6455.http]"),
        ("[`http.client`](../rfc6455/http.py)", "[`http.client`][rfc6455.http]"),
        ("[the core](../rfc6455/)", "[the core][rfc6455]"),
        ("[`Hub`](../chatd/hub.py)", "[`Hub`][chatd.hub.Hub]"),
        # Anything else outside docs/: text, with the path as code.
        ("[the tests](../tests/test_frames.py)", "the tests (`tests/test_frames.py`)"),
        ("[`tests/test_frames.py`](../tests/test_frames.py)", "`tests/test_frames.py`"),
        ("[`test_x`](../tests/test_frames.py)", "`test_x` (`tests/test_frames.py`)"),
        ("[README](../README.md)", "README (`README.md`)"),
        ("![chart](../bench/chart.png)", "chart (`bench/chart.png`)"),
        # Left alone: pages and files of the site, absolute URLs, code.
        ("[protocol](protocol.md#envelope)", "[protocol](protocol.md#envelope)"),
        (
            "[RFC](https://www.rfc-editor.org/rfc/rfc6455)",
            "[RFC](https://www.rfc-editor.org/rfc/rfc6455)",
        ),
        ("`[x](../rfc6455/frames.py)`", "`[x](../rfc6455/frames.py)`"),
    ],
)
def test_hook_rewrites_links_out_of_docs(markdown: str, expected: str) -> None:
    require("griffe")
    assert rewrite(f"See {markdown}.\n") == f"See {expected}.\n"


def test_hook_resolves_links_from_a_page_in_a_subfolder() -> None:
    require("griffe")
    assert rewrite("[`decode`](../../rfc6455/trace.py)", "howto/trace.md") == (
        "[`decode`][rfc6455.trace.decode]"
    )
    assert rewrite("[x](../protocol.md)", "howto/trace.md") == "[x](../protocol.md)"


def test_hook_leaves_fenced_code_alone() -> None:
    markdown = (
        "```text\n[a](../rfc6455/frames.py)\n\n[b](../tests/x.py)\n```\n"
        "~~~\n````\n[c](../tests/x.py)\n~~~\n"
    )
    assert rewrite(markdown) == markdown


def test_hook_reads_links_and_code_spans_that_wrap() -> None:
    require("griffe")
    markdown = (
        "Read [the frame\ntests](../tests/test_frames.py) and `[not\na link](../x.py)`.\n"
        "\n"
        "[`FrameParser`](../rfc6455/frames.py)\n"
    )
    assert rewrite(markdown) == (
        "Read the frame\ntests (`tests/test_frames.py`) and `[not\na link](../x.py)`.\n"
        "\n"
        "[`FrameParser`][rfc6455.frames.FrameParser]\n"
    )


# --- the site ------------------------------------------------------------------------------


def test_every_module_is_in_the_api_reference() -> None:
    documented = set()
    for page in (DOCS / "reference").glob("*.md"):
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("::: "):
                documented.add(line.removeprefix("::: ").strip())
    modules = set()
    for package in hooks.PACKAGES:
        modules.add(package)
        for path in (ROOT / package).glob("*.py"):
            if path.stem != "__init__" and (path.stem == "__main__" or path.stem[0] != "_"):
                modules.add(f"{package}.{path.stem}")
    assert modules - documented == set(), "add a ::: line to a docs/reference page"


def test_site_builds_strictly(tmp_path: Path) -> None:
    require("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "reference" / "rfc6455" / "index.html").exists()
