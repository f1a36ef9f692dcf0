"""Draw the docs' diagrams from the code's own tables and write them into the docs.

    python docs/gen_diagrams.py           # write the figures, fill the marked regions
    python docs/gen_diagrams.py --check   # change nothing; exit 1 if anything is stale

Two figures, each drawn from the table the code itself runs on, so a figure cannot
drift from the code without ``--check`` (run by ``make test``) noticing:

- ``frame-header``: the frame header of RFC 6455 section 5.2, in the RFC's ASCII style,
  from ``rfc6455.frames.HEADER_FIELDS``.
- ``connection-states``: the ``Connection`` state machine, from
  ``rfc6455.connection.TRANSITIONS``, as ``diagrams/connection-states.svg`` (drawn here,
  a fixed layout in ``State`` order; no Graphviz) and a transition table.

A markdown file under ``docs/`` asks for a figure with a pair of HTML comments, which
GitHub does not show::

    <!-- generated:frame-header -->
    <!-- /generated:frame-header -->

Everything between the two lines is replaced on every run: edit around them, not in them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from rfc6455.connection import TRANSITIONS, State
from rfc6455.frames import HEADER_FIELDS, HeaderField

DOCS_DIR = Path(__file__).resolve().parent
#: Where the state diagram is written, relative to the docs directory.
STATES_SVG = Path("diagrams/connection-states.svg")

# --- the frame header, RFC style --------------------------------------------------------

#: The RFC draws the header 32 bits to a row, two characters to a bit.
BITS_PER_ROW = 32
PAYLOAD_DATA = "Payload Data"


@dataclass(frozen=True)
class _Segment:
    """The part of one field that falls in one row of the figure."""

    field: int  # index in the figure's fields; the parts of one field share it
    start: int  # first bit, counted from the start of the header
    end: int  # the bit after the last
    label: tuple[str, ...]

    @property
    def columns(self) -> tuple[int, int]:
        """The columns of its left and right edges in the figure (two per bit)."""
        left = 2 * (self.start % BITS_PER_ROW)
        return left, left + 2 * (self.end - self.start)


def _width_label(field: HeaderField) -> str:
    """``(4)`` for a fixed field, ``(16/64)`` for one whose size varies."""
    return "(" + "/".join(str(width) for width in field.widths if width) + ")"


def _wrap(text: str, width: int) -> list[str]:
    """Split ``text`` into lines of at most ``width`` characters, at spaces if it can."""
    if width < 3:
        # A one-bit field has room for one character: the RFC writes the name downwards.
        return [char for char in text if char != " "]
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.extend(word[i : i + width] for i in range(0, len(word), width))
    return lines


def _segments(fields: Sequence[HeaderField]) -> list[_Segment]:
    """Lay the fields out at their widest, cut at row ends, then the payload to row end."""
    segments: list[_Segment] = []
    position = 0
    for index, field in enumerate(fields):
        end = position + max(field.widths)
        start = position
        while start < end:
            stop = min(end, (start // BITS_PER_ROW + 1) * BITS_PER_ROW)
            room = 2 * (stop - start) - 1
            if start == position:
                label = _wrap(field.name, room)
                if room >= 3:
                    label.append(_width_label(field))
                if 0 in field.widths:
                    label.extend(_wrap("if present", room))
            else:
                label = _wrap(f"{field.name} (continued)", room)
            segments.append(_Segment(index, start, stop, tuple(label)))
            start = stop
        position = end
    row_end = (position // BITS_PER_ROW + 1) * BITS_PER_ROW
    payload = _wrap(PAYLOAD_DATA, 2 * (row_end - position) - 1)
    segments.append(_Segment(len(fields), position, row_end, tuple(payload)))
    return segments


def _ruler() -> list[str]:
    tens = [" "] * (2 * BITS_PER_ROW)
    units = [" "] * (2 * BITS_PER_ROW)
    for bit in range(BITS_PER_ROW):
        if bit % 10 == 0:
            tens[2 * bit + 1] = str(bit // 10)
        units[2 * bit + 1] = str(bit % 10)
    return ["".join(tens).rstrip(), "".join(units).rstrip()]


def _border(above: list[_Segment], below: list[_Segment], open_field: int) -> str:
    """The line between two rows: ``+`` at every field edge, ``- -`` where a field goes on.

    A field that continues from the row above into the row below is drawn with a dashed
    line, as in the RFC; so is the bottom of the payload, which goes on past the figure.
    """

    def field_at(row: list[_Segment], column: int) -> int | None:
        for segment in row:
            left, right = segment.columns
            if left < column < right:
                return segment.field
        return None

    edges = {edge for segment in above + below for edge in segment.columns}
    edges |= {0, 2 * BITS_PER_ROW}
    line = []
    for column in range(2 * BITS_PER_ROW + 1):
        if column in edges:
            line.append("+")
            continue
        over, under = field_at(above, column), field_at(below, column)
        dashed = over is not None and (over == under or (under is None and over == open_field))
        line.append(("-" if column % 2 == 0 else " ") if dashed else "-")
    return "".join(line)


def _text_rows(row: list[_Segment]) -> list[str]:
    height = max(len(segment.label) for segment in row)
    lines = []
    for line_number in range(height):
        parts = []
        for segment in row:
            left, right = segment.columns
            room = right - left - 1
            text = segment.label[line_number] if line_number < len(segment.label) else ""
            before = (room - len(text) + 1) // 2
            parts.append(" " * before + text + " " * (room - before - len(text)))
        lines.append("|" + "|".join(parts) + "|")
    return lines


def frame_header_layout(fields: Sequence[HeaderField] = HEADER_FIELDS) -> str:
    """The RFC 6455 section 5.2 figure, drawn from ``fields``; one string, lines ending in \\n.

    Every field is drawn at its widest (the RFC does the same: a 64-bit length and a
    masking key), labelled with its name and its possible widths in bits, and followed by
    the start of the payload.
    """
    segments = _segments(fields)
    rows: list[list[_Segment]] = []
    for segment in segments:
        if segment.start // BITS_PER_ROW == len(rows):
            rows.append([])
        rows[-1].append(segment)
    lines = _ruler()
    previous: list[_Segment] = []
    for row in rows:
        lines.append(_border(previous, row, open_field=len(fields)))
        lines.extend(_text_rows(row))
        previous = row
    lines.append(_border(previous, [], open_field=len(fields)))
    return "\n".join(lines) + "\n"


# --- the connection state machine --------------------------------------------------------

# Sizes in pixels. The figure is about 850 wide: a page column shows it at 80% or more.
BOX_WIDTH = 116
BOX_HEIGHT = 44
MIN_GAP = 100  # between two boxes: room for the label of a straight arrow
MARGIN = 14
LABEL_SIZE = 14  # font size of the triggers
CHAR_WIDTH = 7.8  # of that font, a generous average, for laying out labels
ARC_STEP = 46  # how much higher each further arc on one side climbs


def _edges() -> dict[tuple[State, State], list[str]]:
    """TRANSITIONS grouped by (state, next state): one arrow each, all its triggers."""
    edges: dict[tuple[State, State], list[str]] = {}
    for (state, trigger), next_state in TRANSITIONS.items():
        edges.setdefault((state, next_state), []).append(str(trigger.value))
    return edges


def connection_states_svg() -> str:
    """The state machine as a self-contained SVG: states left to right in ``State`` order.

    An arrow joins neighbours in a straight line; any other arrow is an arc, above or
    below the row (whichever has fewer so far), higher the further it reaches. Each arrow
    is labelled with the triggers that take it (stacked, over a straight arrow). A state
    that nothing leaves has a double border.
    """
    states = list(State)
    edges = _edges()
    column = {state: index for index, state in enumerate(states)}
    straight = {
        pair: labels for pair, labels in edges.items() if column[pair[1]] - column[pair[0]] == 1
    }
    # A straight arrow has its triggers stacked above it, one to a line.
    longest = max((len(label) for labels in straight.values() for label in labels), default=0)
    gap = max(MIN_GAP, int(longest * CHAR_WIDTH) + 16)

    # Arcs: shortest first, so that a longer arc on the same side passes over a shorter one.
    arcs = sorted(
        (pair for pair in edges if pair not in straight),
        key=lambda pair: (abs(column[pair[1]] - column[pair[0]]), column[pair[0]]),
    )
    sides: dict[tuple[State, State], tuple[int, int]] = {}  # pair -> (side, level)
    count = {-1: 0, 1: 0}  # -1: above the row, 1: below
    for pair in arcs:
        side = -1 if count[-1] <= count[1] else 1
        count[side] += 1
        sides[pair] = (side, count[side])

    width = MARGIN * 2 + len(states) * BOX_WIDTH + (len(states) - 1) * gap
    above = ARC_STEP * count[-1] + (MARGIN if count[-1] else 0)
    below = ARC_STEP * count[1] + (MARGIN if count[1] else 0)
    top = MARGIN + above  # y of the boxes' top edge
    height = top + BOX_HEIGHT + below + MARGIN

    def left(state: State) -> int:
        return MARGIN + column[state] * (BOX_WIDTH + gap)

    def centre(state: State) -> int:
        return left(state) + BOX_WIDTH // 2

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        "<title>rfc6455 Connection states (generated from rfc6455.connection.TRANSITIONS)</title>",
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
        'markerHeight="9" orient="auto-start-reverse">',
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#333"/>',
        "</marker>",
        "</defs>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    terminal = {state for state in states if not any(pair[0] is state for pair in edges)}
    for state in states:
        x, y = left(state), top
        out.append(f'<g class="state" id="state-{state.value}">')
        out.append(
            f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="8" '
            'fill="#eef3fb" stroke="#333" stroke-width="1.5"/>'
        )
        if state in terminal:
            out.append(
                f'<rect x="{x + 4}" y="{y + 4}" width="{BOX_WIDTH - 8}" '
                f'height="{BOX_HEIGHT - 8}" rx="5" fill="none" stroke="#333"/>'
            )
        out.append(
            f'<text x="{centre(state)}" y="{y + BOX_HEIGHT // 2 + 5}" text-anchor="middle" '
            f'font-size="15" font-weight="bold" fill="#111">{escape(str(state.value))}</text>'
        )
        out.append("</g>")

    label_style = (
        f'text-anchor="middle" font-size="{LABEL_SIZE}" fill="#1a4d8f" stroke="white" '
        'stroke-width="4" paint-order="stroke"'
    )
    for (state, next_state), labels in edges.items():
        text = escape(", ".join(labels))
        title = escape(f"{state.value} → {next_state.value}: {', '.join(labels)}")
        out.append(f'<g class="transition" data-from="{state.value}" data-to="{next_state.value}">')
        out.append(f"<title>{title}</title>")
        if (state, next_state) in straight:
            x1 = left(state) + BOX_WIDTH
            x2 = left(next_state)
            y = top + BOX_HEIGHT // 2
            out.append(
                f'<path d="M {x1} {y} L {x2} {y}" fill="none" stroke="#333" '
                'stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
            for line, label in enumerate(reversed(labels)):
                text_y = y - 8 - (LABEL_SIZE + 3) * line
                out.append(
                    f'<text x="{(x1 + x2) // 2}" y="{text_y}" {label_style}>{escape(label)}</text>'
                )
        elif state is next_state:
            x, y = centre(state), top
            out.append(
                f'<path d="M {x - 20} {y} C {x - 30} {y - 40}, {x + 30} {y - 40}, {x + 20} {y}" '
                'fill="none" stroke="#333" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
            out.append(f'<text x="{x}" y="{y - 36}" {label_style}>{text}</text>')
        else:
            side, level = sides[state, next_state]
            direction = 1 if column[next_state] > column[state] else -1
            x1 = centre(state) + direction * BOX_WIDTH // 4
            x2 = centre(next_state) - direction * BOX_WIDTH // 4
            y = top if side < 0 else top + BOX_HEIGHT
            # A cubic curve reaches 3/4 of its control points' offset at its middle.
            rise = (ARC_STEP * level + MARGIN // 2) * 4 // 3
            control = y + side * rise
            out.append(
                f'<path d="M {x1} {y} C {x1} {control}, {x2} {control}, {x2} {y}" '
                'fill="none" stroke="#333" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
            apex = y + side * rise * 3 // 4
            text_y = apex - 6 if side < 0 else apex + 16
            out.append(f'<text x="{(x1 + x2) // 2}" y="{text_y}" {label_style}>{text}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def transition_table() -> str:
    """TRANSITIONS as a markdown table, in the table's own order."""
    lines = ["| state | trigger | next state |", "| --- | --- | --- |"]
    for (state, trigger), next_state in TRANSITIONS.items():
        lines.append(f"| {state.value} | {trigger.value} | {next_state.value} |")
    return "\n".join(lines) + "\n"


# --- filling the marked regions ----------------------------------------------------------


def _frame_header_region(page: Path, docs_dir: Path) -> str:
    return "```text\n" + frame_header_layout() + "```\n"


def _connection_states_region(page: Path, docs_dir: Path) -> str:
    image = Path(os.path.relpath(docs_dir / STATES_SVG, page.parent)).as_posix()
    return f"![Connection states]({image})\n\n" + transition_table()


#: The figures a page may ask for, by marker name.
REGIONS: dict[str, Callable[[Path, Path], str]] = {
    "frame-header": _frame_header_region,
    "connection-states": _connection_states_region,
}

_START = re.compile(r"<!-- generated:([a-z0-9-]+) -->\n")


class MarkerError(Exception):
    """A page's markers are broken: unknown name, or a start without its end."""


def fill_regions(text: str, page: Path, docs_dir: Path) -> str:
    """Return ``text`` with every marked region's content regenerated."""
    out = []
    position = 0
    while match := _START.search(text, position):
        name = match.group(1)
        if name not in REGIONS:
            raise MarkerError(f"{page}: unknown generated region {name!r}")
        end_marker = f"<!-- /generated:{name} -->"
        end = text.find(end_marker, match.end())
        if end < 0:
            raise MarkerError(f"{page}: {match.group(0).strip()} without {end_marker}")
        out.append(text[position : match.end()])
        out.append(REGIONS[name](page, docs_dir))
        out.append(end_marker)
        position = end + len(end_marker)
    out.append(text[position:])
    return "".join(out)


def outputs(docs_dir: Path) -> dict[Path, str]:
    """Every file the generator owns or fills, with the content it should have."""
    files = {docs_dir / STATES_SVG: connection_states_svg()}
    for page in sorted(docs_dir.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        if "<!-- generated:" in text:
            files[page] = fill_regions(text, page, docs_dir)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the figures; the exit status for the shell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if any file is stale"
    )
    parser.add_argument(
        "--docs-dir", type=Path, default=DOCS_DIR, help="the docs directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        wanted = outputs(args.docs_dir)
    except MarkerError as error:
        print(f"gen_diagrams: {error}", file=sys.stderr)
        return 2
    stale = [
        path
        for path, content in wanted.items()
        if not path.exists() or path.read_text(encoding="utf-8") != content
    ]
    for path in stale:
        if args.check:
            print(f"gen_diagrams: {path} is out of date; run `make docs`", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path], encoding="utf-8")
            print(f"gen_diagrams: wrote {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
