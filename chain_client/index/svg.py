"""Certificate lineage as an SVG picture: one box per certificate (id, status, holder, value),
children below their parent, the certificate asked about outlined."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from chain_client.index.state import LineageNode
from chain_client.models import CertificateStatus

BOX_W, BOX_H = 210, 66
GAP_X, GAP_Y = 24, 56
MARGIN = 24
TITLE_H = 34

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


def _layout(root: LineageNode) -> list[_Placed]:
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
        placed.append(_Placed(node, x, depth * (BOX_H + GAP_Y)))
        return x

    place(root, 0)
    return placed


def _short(address: str) -> str:
    return f"{address[:8]}…{address[-6:]}"


def _status(node: LineageNode) -> str:
    if node.record["frozen"]:
        return "frozen"
    return CertificateStatus(node.record["status"]).name.lower()


def lineage_svg(root: LineageNode, focus: int | None = None, title: str = "") -> str:
    placed = _layout(root)
    width = max(p.x for p in placed) + BOX_W + 2 * MARGIN
    height = max(p.y for p in placed) + BOX_H + 2 * MARGIN + TITLE_H
    where = {p.node.certificate_id: p for p in placed}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 14}" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    top = MARGIN + TITLE_H
    for p in placed:
        for child in p.node.children:
            c = where[child.certificate_id]
            x1, y1 = MARGIN + p.x + BOX_W / 2, top + p.y + BOX_H
            x2, y2 = MARGIN + c.x + BOX_W / 2, top + c.y
            mid = (y1 + y2) / 2
            parts.append(
                f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}" '
                'fill="none" stroke="#9e9e9e" stroke-width="1.5"/>'
            )
    for p in sorted(placed, key=lambda q: q.node.certificate_id):
        parts.append(_box(p, top, p.node.certificate_id == focus))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _box(p: _Placed, top: float, focused: bool) -> str:
    node, x, y = p.node, MARGIN + p.x, top + p.y
    status = _status(node)
    fill, stroke = _STYLE[status] if status in _STYLE else ("#ffffff", "#000000")
    width = 3 if focused else 1.5
    record = node.record
    lines = [
        (f"#{node.certificate_id}  {status}", 13, "bold"),
        (_short(record["holder"]), 11, "normal"),
        (f"value {record['value']:,}", 12, "normal"),
    ]
    texts = "".join(
        f'<text x="{x + 10:.1f}" y="{y + 19 + 18 * i:.1f}" font-size="{size}" font-weight="{weight}">'
        f"{escape(text)}</text>"
        for i, (text, size, weight) in enumerate(lines)
    )
    label = escape("certificate " + str(node.certificate_id) + " held by " + str(record["holder"]))
    return (
        f"<g><title>{label}</title>"
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{width}"/>{texts}</g>'
    )
