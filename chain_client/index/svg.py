"""Certificate lineage as an SVG picture: one box per certificate (id, status, holder, value),
children below their parent, the certificate asked about outlined. A merge is a dashed arrow from
the certificate that gave the value to the one that took it, and a note in the giver's box."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from chain_client.index.state import LineageNode, Merge
from chain_client.models import CertificateStatus

BOX_W, BOX_H = 210, 66
GAP_X, GAP_Y = 24, 56
MARGIN = 24
TITLE_H = 34
#: a merge note's line in its box, and the most a box lists (the rest are counted on the last line)
NOTE_H = 16
MAX_NOTES = 3
MERGE_COLOUR = "#e65100"

_STYLE = {
    "live": ("#e8f5e9", "#2e7d32"),
    "settled": ("#f1f1f1", "#8a8a8a"),
    "frozen": ("#e3f2fd", "#1565c0"),
}


@dataclass
class _Placed:
    node: LineageNode
    x: float
    y: float


def _layout(root: LineageNode, box_h: float) -> list[_Placed]:
    """Leaves take consecutive columns in tree order; a parent sits centred over its children."""
    placed: list[_Placed] = []
    next_column = 0

    def place(node: LineageNode, depth: int) -> float:
        nonlocal next_column
        if node.children:
            xs = [place(child, depth + 1) for child in node.children]
            x = (xs[0] + xs[-1]) / 2
        else:
            x = next_column * (BOX_W + GAP_X)
            next_column += 1
        placed.append(_Placed(node, x, depth * (box_h + GAP_Y)))
        return x

    place(root, 0)
    return placed


def _notes(node: LineageNode) -> list[str]:
    """The merge notes of a box: one line per merge, at most MAX_NOTES lines."""
    lines = [f"merged {m.value:,} into #{m.target}" for m in node.merged_into]
    if len(lines) > MAX_NOTES:
        lines = [*lines[: MAX_NOTES - 1], f"and {len(lines) - MAX_NOTES + 1} more merges"]
    return lines


def _short(address: str) -> str:
    return f"{address[:8]}…{address[-6:]}"


def _status(node: LineageNode) -> str:
    if node.record["frozen"]:
        return "frozen"
    return CertificateStatus(node.record["status"]).name.lower()


def lineage_svg(root: LineageNode, focus: int | None = None, title: str = "") -> str:
    nodes = [node for _, node in root.walk()]
    box_h = BOX_H + NOTE_H * max(len(_notes(node)) for node in nodes)
    placed = _layout(root, box_h)
    merged = [m for node in nodes for m in node.merged_into]
    # A line under the title says what the dashed arrows are, only when there are some.
    title_h = TITLE_H + (NOTE_H if merged else 0)
    width = max(p.x for p in placed) + BOX_W + 2 * MARGIN
    # Room below the last row for an arrow dipping under it (between boxes far apart in a row).
    height = max(p.y for p in placed) + box_h + 2 * MARGIN + title_h + (GAP_Y / 2 if merged else 0)
    where = {p.node.certificate_id: p for p in placed}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 14}" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    if merged:
        parts.append(
            f'<defs><marker id="merged" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{MERGE_COLOUR}"/></marker></defs>'
        )
        parts.append(
            f'<text x="{MARGIN}" y="{MARGIN + 14 + NOTE_H + 4}" font-size="11" fill="{MERGE_COLOUR}">'
            "dashed arrow: value merged into another certificate of the order</text>"
        )
    top = MARGIN + title_h
    for p in placed:
        for child in p.node.children:
            c = where[child.certificate_id]
            x1, y1 = MARGIN + p.x + BOX_W / 2, top + p.y + box_h
            x2, y2 = MARGIN + c.x + BOX_W / 2, top + c.y
            mid = (y1 + y2) / 2
            parts.append(
                f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}" '
                'fill="none" stroke="#9e9e9e" stroke-width="1.5"/>'
            )
    for p in sorted(placed, key=lambda q: q.node.certificate_id):
        parts.append(_box(p, top, box_h, p.node.certificate_id == focus))
    # Over the boxes: an arrow that passes a box on its way (from a grandchild to the root) would
    # seem to end there if it went behind it.
    for m in merged:
        if m.target in where:
            parts.append(_merge_arrow(m, where[m.source], where[m.target], top, box_h))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _box(p: _Placed, top: float, box_h: float, focused: bool) -> str:
    node, x, y = p.node, MARGIN + p.x, top + p.y
    status = _status(node)
    fill, stroke = _STYLE[status] if status in _STYLE else ("#ffffff", "#000000")
    width = 3 if focused else 1.5
    record = node.record
    lines = [
        (y + 19, f"#{node.certificate_id}  {status}", 13, "bold", "black"),
        (y + 37, _short(record["holder"]), 11, "normal", "black"),
        (y + 55, f"value {record['value']:,}", 12, "normal", "black"),
        *(
            (y + 55 + NOTE_H * (i + 1), note, 11, "normal", MERGE_COLOUR)
            for i, note in enumerate(_notes(node))
        ),
    ]
    texts = "".join(
        f'<text x="{x + 10:.1f}" y="{baseline:.1f}" font-size="{size}" font-weight="{weight}" '
        f'fill="{colour}">{escape(text)}</text>'
        for baseline, text, size, weight, colour in lines
    )
    label = escape("certificate " + str(node.certificate_id) + " held by " + str(record["holder"]))
    return (
        f"<g><title>{label}</title>"
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{box_h}" rx="8" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{width}"/>{texts}</g>'
    )


def _merge_arrow(merge: Merge, source: _Placed, target: _Placed, top: float, box_h: float) -> str:
    """A dashed arrow from the giver's box to the taker's. It leaves and enters each box square to
    the edge it crosses, so it never runs back under the box it points at; between rows it uses
    the quarter of each box's edge that faces the other box, clear of the parent-child lines (those
    run from the middle of a box's edges)."""
    sx, sy = MARGIN + source.x, top + source.y
    tx, ty = MARGIN + target.x, top + target.y
    facing = 0.75 if tx >= sx else 0.25
    x1, x2 = sx + BOX_W * facing, tx + BOX_W * (1 - facing if tx != sx else facing)
    out = GAP_Y * 0.6
    if sy != ty:
        up = ty < sy
        y1, y2 = (sy, ty + box_h) if up else (sy + box_h, ty)
        step = -out if up else out
        d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + step:.1f} {x2:.1f},{y2 - step:.1f} {x2:.1f},{y2:.1f}"
    elif abs(tx - sx) <= BOX_W + GAP_X:
        # Neighbours in a row: straight across the gap between them, below the middle of the boxes.
        y = sy + box_h * 0.6
        x1, x2 = (sx + BOX_W, tx) if tx > sx else (sx, tx + BOX_W)
        d = f"M{x1:.1f},{y:.1f} L{x2:.1f},{y:.1f}"
    else:
        # Further along a row: from the bottom edges, dipping below the boxes in between.
        y = sy + box_h
        d = f"M{x1:.1f},{y:.1f} C{x1:.1f},{y + out:.1f} {x2:.1f},{y + out:.1f} {x2:.1f},{y:.1f}"
    said = escape(
        f"certificate {merge.source} merged {merge.value:,} into certificate {merge.target} "
        f"at block {merge.block} (tx {merge.tx})"
    )
    # A path, not a group: a group per certificate box is what a reader of the picture counts.
    return (
        f'<path class="merge" d="{d}" fill="none" '
        f'stroke="{MERGE_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4" marker-end="url(#merged)">'
        f"<title>{said}</title></path>"
    )
