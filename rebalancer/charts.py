"""Small, dependency-free SVG charts for the self-contained HTML run report.

Every public function returns one complete standalone SVG document as a ``str``: a root
``<svg xmlns=... width height viewBox role="img">`` whose first child is a ``<title>`` with the
chart title, sans-serif text, a light grid and a restrained palette. Embed it inline or as an
``<img src=...>`` through :func:`data_uri`.

Conventions the report relies on:

- Output is deterministic: the same input gives the same bytes. Coordinates are written with
  two decimals (pixels), ticks are "nice" numbers (1, 2 or 5 x 10^k) covering the data.
- Every caller text (titles, axis labels, category and series names) is XML-escaped; characters
  XML 1.0 cannot carry (control characters, lone surrogates) are removed.
- NaN and infinite values are dropped, never drawn, and counted in a footnote
  (``class="footnote"``), e.g. "3 values not shown (NaN or infinite)".
- A chart with nothing to draw is still a valid document, with the text "no data"
  (``class="nodata"``).
- Data marks carry a class so they can be counted: ``bar`` (histogram and bar chart),
  ``range`` and ``median`` (range chart), ``point`` and ``diagonal`` (scatter).

Text widths are estimated (0.6 em per character), which is good enough for layout at the
default sizes; long category labels are shortened with an ellipsis, the full text kept as a
hover ``<title>``.
"""
from __future__ import annotations

import base64
import math
import re
import sys
from dataclasses import dataclass
from html import escape as _html_escape
from typing import Mapping, Sequence

import numpy as np

__all__ = ["histogram", "bars", "ranges", "scatter", "data_uri"]

#: Series colours, in order (colour-blind tolerant, muted); cycled past eight series.
PALETTE = ("#4c72b0", "#dd8452", "#8c8c8c", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
NEGATIVE = "#c44e52"  # bars below zero in :func:`bars`
INK = "#222222"
MUTED = "#666666"
GRID = "#e6e6e6"
AXIS = "#888888"

FONT = 11  # px: tick labels, category labels, legend
TITLE_FONT = 14  # px
NOTE_FONT = 10  # px: footnote
CHAR_EM = 0.6  # average glyph width of sans-serif text, in em (layout estimate only)
MIN_WIDTH, MIN_HEIGHT = 160, 120  # px
MAX_TICKS = 50
_BIG = sys.float_info.max

# Characters XML 1.0 allows (https://www.w3.org/TR/xml/#charsets); everything else is removed.
_XML_BAD = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# ----------------------------------------------------------------------------- text and numbers

def _clean(text: object) -> str:
    """Caller text as a str XML can carry (unescaped)."""
    return _XML_BAD.sub("", str(text))


def _esc(text: object) -> str:
    """Caller text, cleaned and XML-escaped (``& < > " '``) for element text or attributes."""
    return _html_escape(_clean(text), quote=True)


def _f(v: float) -> str:
    """A coordinate in px with two decimals; never "nan", "inf" or "-0.00"."""
    v = float(v)
    if not math.isfinite(v):  # a safety net only: scales map finite data into the canvas
        v = 0.0
    v = min(max(v, -1e6), 1e6)
    return f"{round(v, 2) + 0.0:.2f}"


def _text_w(text: str, size: float = FONT) -> float:
    """Estimated width of ``text`` in px at font size ``size`` px."""
    return len(text) * size * CHAR_EM


def _fit(text: str, px: float, size: float = FONT) -> str:
    """``text`` shortened with an ellipsis to about ``px`` px wide."""
    n = max(int(px / (size * CHAR_EM)), 1)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _compact(v: float, digits: int = 3) -> str:
    """A tick value in few characters: 1.5k, 20M, 0.05 (``digits`` significant digits)."""
    v = float(v) + 0.0
    r = float(f"{v:.{digits}g}")  # round first so 999999 reads 1M, not 1e+03k
    if not math.isfinite(r):  # rounding up past the largest float
        r = v
    a = abs(r)
    if a < 1e15:
        for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{r / div:.{digits}g}{suffix}"
    return f"{r + 0.0:.{digits}g}"


def _tick_labels(ticks: Sequence[float], fmt: str | None) -> list[str]:
    """Labels of ``ticks``: ``fmt.format(t)``, or compact numbers precise enough to differ."""
    if fmt is not None:
        return [_clean(fmt.format(t)) for t in ticks]
    labels: list[str] = []
    for digits in range(3, 18):
        labels = [_compact(t, digits) for t in ticks]
        if len(set(labels)) == len(labels):
            break
    return labels


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _dropped(n: int, noun: str) -> str:
    return f"{_plural(n, noun)} not shown (NaN or infinite)"


# ----------------------------------------------------------------------------- scales and ticks

def _nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Ticks at multiples of a step 1, 2 or 5 x 10^k, about ``target`` intervals, covering
    [lo, hi] (finite). The first and last tick are the axis domain. Falls back to [lo, hi]
    where floating point cannot give nice ticks (extreme or subnormal ranges)."""
    lo, hi = float(lo), float(hi)
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = max(lo - pad, -_BIG), min(hi + pad, _BIG)
    fallback = [lo, hi]
    raw = (hi / 2 - lo / 2) / target * 2  # halves first: hi - lo may overflow
    if not (math.isfinite(raw) and raw > 0):
        return fallback
    base = 10.0 ** math.floor(math.log10(raw))
    if not (math.isfinite(base) and base > 0):
        return fallback
    step = 10 * base
    for m in (1, 2, 5):
        if m * base >= raw:
            step = m * base
            break
    if integer:
        step = max(step, 1.0)
    try:
        start, stop = math.floor(lo / step), math.ceil(hi / step)
    except (OverflowError, ValueError):
        return fallback
    if stop - start > MAX_TICKS or stop <= start:
        return fallback
    ticks = [k * step + 0.0 for k in range(start, stop + 1)]
    if not all(math.isfinite(t) for t in ticks) or any(b <= a for a, b in zip(ticks, ticks[1:])):
        return fallback
    return ticks


@dataclass(frozen=True)
class _Scale:
    """Linear map of the data interval [lo, hi] onto the pixel interval [p0, p1] (p1 < p0 for
    a y axis). Where hi - lo overflows it works on halves; a zero-width interval maps to the
    middle."""
    lo: float
    hi: float
    p0: float
    p1: float

    def __call__(self, v: float) -> float:
        v = float(v)
        span = self.hi - self.lo
        if math.isfinite(span) and span > 0:
            t = (v - self.lo) / span
        else:
            half = self.hi / 2 - self.lo / 2
            if not half > 0:
                return (self.p0 + self.p1) / 2
            t = (v / 2 - self.lo / 2) / half
        return self.p0 + t * (self.p1 - self.p0)


def _x_ticks(lo: float, hi: float, p0: float, p1: float, fmt: str | None, *,
             exact: bool = False) -> tuple[_Scale, list[float], list[str]]:
    """Scale and labelled ticks for a horizontal axis from data ``lo`` to ``hi`` drawn over
    pixels ``p0`` to ``p1``: as many nice ticks (5 down to 2 intervals) as leave the labels
    apart. ``exact``: the axis spans [lo, hi] itself and only ticks inside it are drawn
    (bars end at the plot's edge); else it spans the outer ticks."""
    for target in (5, 4, 3, 2):
        ticks = _nice_ticks(lo, hi, target)
        if exact and lo < hi:
            dom = (lo, hi)
            ticks = [t for t in ticks if lo <= t <= hi] or [lo, hi]
        else:
            dom = (ticks[0], ticks[-1])
        scale = _Scale(dom[0], dom[1], p0, p1)
        labels = _tick_labels(ticks, fmt)
        xs = [scale(t) for t in ticks]
        if all(b - a >= (_text_w(la) + _text_w(lb)) / 2 + 8
               for a, b, la, lb in zip(xs, xs[1:], labels, labels[1:])):
            break
    return scale, ticks, labels  # the sparsest try if none fits; _x_axis thins the rest


def _value_domain(values: np.ndarray, include_zero: bool) -> tuple[float, float]:
    """(lo, hi) of finite ``values``, widened to 0 when asked; (0, 1) when all are zero."""
    lo, hi = float(values.min()), float(values.max())
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if lo == hi == 0.0:
            hi = 1.0
    return lo, hi


# ----------------------------------------------------------------------------- SVG pieces

def _size(width: object, height: object) -> tuple[int, int]:
    w, h = int(width), int(height)  # type: ignore[call-overload]
    if w < MIN_WIDTH or h < MIN_HEIGHT:
        raise ValueError(f"chart size {w} x {h} px: at least {MIN_WIDTH} x {MIN_HEIGHT} px")
    return w, h


def _text(x: float, y: float, s: str, *, size: float | None = None, anchor: str | None = None,
          fill: str | None = None, cls: str | None = None, weight: str | None = None,
          rotate: bool = False, tooltip: str | None = None) -> str:
    """A ``<text>`` at (x, y) px; ``s`` and ``tooltip`` are escaped here."""
    a = [f'x="{_f(x)}"', f'y="{_f(y)}"']
    if rotate:
        a.append(f'transform="rotate(-90 {_f(x)} {_f(y)})"')
    if cls:
        a.append(f'class="{cls}"')
    if size is not None:
        a.append(f'font-size="{size:g}"')
    if weight:
        a.append(f'font-weight="{weight}"')
    if anchor:
        a.append(f'text-anchor="{anchor}"')
    if fill:
        a.append(f'fill="{fill}"')
    tip = f"<title>{_esc(tooltip)}</title>" if tooltip else ""
    return f"<text {' '.join(a)}>{_esc(s)}{tip}</text>"


def _line(x1: float, y1: float, x2: float, y2: float, *, stroke: str = AXIS, width: float = 1,
          cls: str | None = None, dash: str | None = None) -> str:
    c = f' class="{cls}"' if cls else ""
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line{c} x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" '
            f'stroke="{stroke}" stroke-width="{width:g}"{d}/>')


def _rect(x: float, y: float, w: float, h: float, fill: str, *, cls: str | None = None,
          opacity: float | None = None, tooltip: str | None = None) -> str:
    c = f' class="{cls}"' if cls else ""
    o = f' fill-opacity="{opacity:g}"' if opacity is not None else ""
    attrs = f'{c} x="{_f(x)}" y="{_f(y)}" width="{_f(max(w, 0.0))}" height="{_f(max(h, 0.0))}" fill="{fill}"{o}'
    if tooltip:
        return f"<rect{attrs}><title>{_esc(tooltip)}</title></rect>"
    return f"<rect{attrs}/>"


def _colour(j: int) -> str:
    return PALETTE[j % len(PALETTE)]


def _open(width: int, height: int, title: str) -> list[str]:
    """The document head: root element, ``<title>``, white background, visible title."""
    t = _clean(title)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="{FONT}">',
        f"<title>{_esc(t)}</title>",
        f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        _text(12, 20, _fit(t, width - 24, TITLE_FONT), size=TITLE_FONT, weight="600", fill=INK,
              cls="title"),
    ]


def _close(parts: list[str], width: int, height: int, notes: list[str]) -> str:
    """Footnote (if any) and the closing tag; the document as one string."""
    if notes:
        note = "; ".join(notes)
        parts.append(_text(8, height - 6, _fit(note, width - 16, NOTE_FONT), size=NOTE_FONT,
                           fill=MUTED, cls="footnote"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _legend(names: Sequence[str], x0: float, y0: float, x_max: float) -> tuple[list[str], float]:
    """Swatch + name per series, wrapped onto rows; returns the parts and the last baseline."""
    parts = ['<g class="legend">']
    x, y = x0, y0
    for j, name in enumerate(names):
        label = _fit(_clean(name), 220)
        w = 14 + _text_w(label) + 16
        if x > x0 and x + w > x_max:
            x, y = x0, y + 16
        parts.append(_rect(x, y - 9, 10, 10, _colour(j)))
        parts.append(_text(x + 14, y, label, fill=INK))
        x += w
    parts.append("</g>")
    return parts, y


def _axis_labels(parts: list, left: float, right: float, top: float, bottom: float, xlabel: str,
                 ylabel: str) -> None:
    """The y label turned along the left edge and the x label under the plot area."""
    parts.append(_text(14, (top + bottom) / 2, _fit(_clean(ylabel), bottom - top), anchor="middle",
                       fill=INK, rotate=True, cls="ylabel"))
    parts.append(_text((left + right) / 2, bottom + 34, _fit(_clean(xlabel), right - left),
                       anchor="middle", fill=INK, cls="xlabel"))


def _no_data(parts: list[str], left: float, top: float, right: float, bottom: float) -> None:
    parts.append(_line(left, bottom, right, bottom, cls="axis"))
    parts.append(_text((left + right) / 2, (top + bottom) / 2, "no data", size=13,
                       anchor="middle", fill=MUTED, cls="nodata"))


def _x_axis(parts: list[str], ticks: list[float], labels: list[str], xs: _Scale, top: float,
            bottom: float) -> None:
    """Vertical grid lines and tick labels under ``bottom``, thinned so labels do not overlap."""
    last = -math.inf
    for t, lab in zip(ticks, labels):
        x = xs(t)
        parts.append(_line(x, top, x, bottom, stroke=GRID, cls="grid"))
        half = _text_w(lab) / 2
        if x - half >= last + 4:
            parts.append(_text(x, bottom + 14, lab, anchor="middle", fill=MUTED, cls="tick"))
            last = x + half


def _y_axis(parts: list[str], ticks: list[float], labels: list[str], ys: _Scale, left: float,
            right: float) -> None:
    """Horizontal grid lines and tick labels left of ``left``."""
    for t, lab in zip(ticks, labels):
        y = ys(t)
        parts.append(_line(left, y, right, y, stroke=GRID, cls="grid"))
        parts.append(_text(left - 6, y + 4, lab, anchor="end", fill=MUTED, cls="tick"))


# ----------------------------------------------------------------------------- histogram

def _bin_texts(e: np.ndarray, xfmt: str) -> tuple[list[str | None], list[str | None], list[str]]:
    """Per edge its label (None for an infinite edge), per bin a centre label for open-ended
    bins ("> 0.3", "< 0"; else None), and per bin its range for hover text."""
    edge = [_clean(xfmt.format(v)) if math.isfinite(v) else None for v in e.tolist()]
    nb = len(e) - 1
    centre: list[str | None] = [None] * nb
    rng: list[str] = []
    for i in range(nb):
        a, b = edge[i], edge[i + 1]
        if a is None and b is None:
            rng.append("all values")
        elif a is None:
            rng.append(f"< {b}")
        elif b is None:
            rng.append(f"> {a}")
        else:
            rng.append(f"{a} to {b}")
        if a is None or b is None:
            centre[i] = rng[-1]
    return edge, centre, rng


def histogram(edges: Sequence[float] | np.ndarray, series: Mapping[str, Sequence[float] | np.ndarray], *,
              title: str, xlabel: str, ylabel: str = "households", width: int = 640,
              height: int = 320, xfmt: str = "{:g}") -> str:
    """Grouped bars of binned counts, one colour per series, with a legend.

    Parameters
    ----------
    edges : array of shape (B + 1,), strictly increasing bin edges in the data's unit. Only
        the first may be -inf and the last +inf: such a bin is drawn open-ended and labelled
        "< a" / "> b". All bins are drawn equally wide (edges are often uneven); the edges
        label the bin boundaries through ``xfmt``.
    series : name -> array of shape (B,): counts (or weights, which may be negative) per bin.
        Drawn side by side within each bin, in the mapping's order. NaN/inf entries are not
        drawn and are counted in the footnote.
    title, xlabel, ylabel : texts (escaped here).
    width, height : size in px.
    xfmt : ``str.format`` pattern for the edge labels.

    Returns
    -------
    str : the SVG document; each drawn bar is a ``<rect class="bar">`` (B x len(series) of
        them when all values are finite), its height proportional to its value.

    Raises
    ------
    ValueError : edges not 1-D, not strictly increasing, NaN, or infinite inside; a series
        whose shape is not (B,); a size below 160 x 120 px.
    """
    width, height = _size(width, height)
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1:
        raise ValueError(f"edges: expected a 1-D array, got shape {e.shape}")
    nb = max(e.size - 1, 0)
    if e.size >= 2:
        with np.errstate(invalid="ignore"):
            increasing = bool(np.all(np.diff(e) > 0))
        if (not np.all(np.isfinite(e[1:-1])) or np.isnan(e[0]) or np.isnan(e[-1])
                or e[0] == np.inf or e[-1] == -np.inf or not increasing):
            raise ValueError("edges: must be strictly increasing, finite except a -inf first "
                             "or +inf last edge")
    names = [_clean(k) for k in series]
    rows = []
    for name, v in series.items():
        a = np.asarray(v, dtype=float)
        if a.shape != (nb,):
            raise ValueError(f"series {name!r}: shape {a.shape}, expected ({nb},) to match edges")
        rows.append(a)
    c = np.stack(rows) if rows else np.empty((0, nb))
    ok = np.isfinite(c)
    dropped = int(c.size - ok.sum())
    notes = [_dropped(dropped, "value")] if dropped else []
    parts = _open(width, height, title)

    has_data = nb > 0 and bool(ok.any())
    if has_data:
        lo, hi = _value_domain(c[ok], include_zero=True)
        yt = _nice_ticks(lo, hi)
        ylab = _tick_labels(yt, None)
        left = max(44.0, 30 + max(_text_w(s) for s in ylab))
    else:
        left = 44.0
    right = width - 16.0
    if names:
        leg, leg_y = _legend(names, left, 40, right)
        parts += leg
    else:
        leg_y = 28.0
    top = leg_y + 14
    bottom = max(height - 56.0, top + 20)
    _axis_labels(parts, left, right, top, bottom, xlabel, ylabel)
    if not has_data:
        _no_data(parts, left, top, right, bottom)
        return _close(parts, width, height, notes)

    ys = _Scale(yt[0], yt[-1], bottom, top)
    _y_axis(parts, yt, ylab, ys, left, right)
    binw = (right - left) / nb
    group = binw * 0.8
    bw = group / len(names)
    edge, centre, rng = _bin_texts(e, xfmt)
    y0 = ys(0.0)
    for j, name in enumerate(names):
        for i in range(nb):
            v = float(c[j, i])
            if not math.isfinite(v):
                continue
            y = ys(v)
            x = left + i * binw + 0.1 * binw + j * bw
            parts.append(_rect(x, min(y, y0), bw, abs(y0 - y), _colour(j), cls="bar",
                               tooltip=f"{name}, {rng[i]}: {_num(v)}"))
    parts.append(_line(left, y0, right, y0, stroke=INK, cls="axis"))

    # Edge labels under the boundaries, open-bin labels under the bin centres; open-bin labels
    # are placed first, the others skipped where they would overlap a placed one.
    placed: list[tuple[float, float]] = []

    def place(x: float, text: str) -> None:
        half = _text_w(text) / 2 + 3
        if all(x + half <= a or x - half >= b for a, b in placed):
            placed.append((x - half, x + half))
            parts.append(_text(x, bottom + 14, text, anchor="middle", fill=MUTED, cls="tick"))

    for i, text in enumerate(centre):
        if text is not None:
            place(left + (i + 0.5) * binw, text)
    finite = [s for s in edge if s is not None]
    widest = max((_text_w(s) for s in finite), default=0.0)
    every = max(1, math.ceil((widest + 8) / binw))
    for i, text in enumerate(edge):
        x = left + i * binw
        parts.append(_line(x, bottom, x, bottom + 4, stroke=AXIS, cls="tick"))
        if text is not None and i % every == 0:
            place(x, text)
    return _close(parts, width, height, notes)


def _num(v: float) -> str:
    """A value for hover text: integers with thousands separators, else 4 significant digits."""
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.4g}"


# ----------------------------------------------------------------------------- bar chart

def bars(labels: Sequence[str], values: Sequence[float] | np.ndarray, *, title: str, xlabel: str,
         width: int = 640, height: int | None = None, fmt: str = "{:,.0f}") -> str:
    """Horizontal bars, one per label, top to bottom in the given order, each value printed at
    its bar's end. Negative values extend left of a zero line (in red).

    Parameters
    ----------
    labels : n category names (escaped here; shortened with an ellipsis if very long).
    values : array of shape (n,), in the unit ``xlabel`` names. A NaN/inf value drops its row;
        dropped rows are counted in the footnote.
    title, xlabel : texts.
    width : px. height : px; None: 22 px per bar plus margins.
    fmt : ``str.format`` pattern of the printed values and of the axis ticks.

    Returns
    -------
    str : the SVG document; one ``<rect class="bar">`` per drawn row, its width proportional
        to |value|.
    """
    labs = [_clean(s) for s in labels]
    vals = np.asarray(values, dtype=float)
    if vals.shape != (len(labs),):
        raise ValueError(f"values: shape {vals.shape}, expected ({len(labs)},) to match labels")
    ok = np.isfinite(vals)
    dropped = int(vals.size - ok.sum())
    keep = [(lab, float(v)) for lab, v, k in zip(labs, vals.tolist(), ok.tolist()) if k]
    n = len(keep)
    top, foot = 36.0, 50.0
    if height is None:
        height = max(int(math.ceil(top + max(n, 3) * 22 + 8 + foot)), MIN_HEIGHT)
    width, height = _size(width, height)
    notes = [_dropped(dropped, "value")] if dropped else []
    parts = _open(width, height, title)
    bottom = max(height - foot, top + 20)
    texts = [_fit(lab, width * 0.4) for lab, _ in keep]
    left = 12 + max([40.0] + [_text_w(t) + 8 for t in texts])
    right = width - 16.0
    parts.append(_text((left + right) / 2, bottom + 32, _fit(_clean(xlabel), right - left),
                       anchor="middle", fill=INK, cls="xlabel"))
    if n == 0:
        _no_data(parts, left, top, right, bottom)
        return _close(parts, width, height, notes)

    v = np.array([x for _, x in keep])
    shown = [_clean(fmt.format(x)) for _, x in keep]
    pad_r = max([0.0] + [_text_w(s) + 8 for s, x in zip(shown, v) if x >= 0])
    pad_l = max([0.0] + [_text_w(s) + 8 for s, x in zip(shown, v) if x < 0])
    room = right - left
    if pad_l + pad_r > 0.6 * room:  # keep at least 40 % of the plot for the bars themselves
        k = 0.6 * room / (pad_l + pad_r)
        pad_l, pad_r = pad_l * k, pad_r * k
    lo, hi = _value_domain(v, include_zero=True)
    xs, xt, xlab = _x_ticks(lo, hi, left + pad_l, right - pad_r, fmt, exact=True)
    _x_axis(parts, xt, xlab, xs, top, bottom)
    row = (bottom - top) / n
    bar_h = max(min(row * 0.7, 16.0), 1.0)
    x0 = xs(0.0)
    for i, ((lab, x), text, s) in enumerate(zip(keep, texts, shown)):
        yc = top + (i + 0.5) * row
        xe = xs(x)
        parts.append(_text(left - 8, yc + 4, text, anchor="end", fill=INK, cls="label",
                           tooltip=lab if text != lab else None))
        parts.append(_rect(min(x0, xe), yc - bar_h / 2, abs(xe - x0), bar_h,
                           PALETTE[0] if x >= 0 else NEGATIVE, cls="bar"))
        if x >= 0:
            parts.append(_text(xe + 4, yc + 4, s, fill=INK, cls="value"))
        else:
            parts.append(_text(xe - 4, yc + 4, s, anchor="end", fill=INK, cls="value"))
    parts.append(_line(x0, top, x0, bottom, stroke=INK, cls="axis"))
    return _close(parts, width, height, notes)


# ----------------------------------------------------------------------------- range chart

def ranges(labels: Sequence[str], series: Mapping[str, Sequence[Sequence[float]]], *, title: str,
           xlabel: str, width: int = 640, height: int | None = None, fmt: str = "{:.2%}") -> str:
    """Dispersion by category: per label, per series, a horizontal range from p10 to p90 with a
    tick at the median.

    Parameters
    ----------
    labels : n category names (e.g. models), top to bottom.
    series : name -> n (p10, p50, p90) tuples aligned with ``labels`` (e.g. "before",
        "after", "naive"), in the unit ``xlabel`` names. A tuple with any NaN/inf is not
        drawn and is counted in the footnote (as a range). p10 > p90 is drawn as given,
        from the smaller to the larger.
    title, xlabel : texts. width : px. height : px; None: grows with labels x series.
    fmt : ``str.format`` pattern of the axis ticks and hover text.

    Returns
    -------
    str : the SVG document; one ``<rect class="range">`` and one ``<line class="median">``
        per drawn tuple.
    """
    labs = [_clean(s) for s in labels]
    names = [_clean(k) for k in series]
    n, ns = len(labs), len(names)
    arrs = []
    for name, v in series.items():
        a = np.asarray(v, dtype=float)
        if n == 0 and a.size == 0:
            a = a.reshape(0, 3)
        if a.shape != (n, 3):
            raise ValueError(f"series {name!r}: shape {a.shape}, expected ({n}, 3): "
                             "(p10, p50, p90) per label")
        arrs.append(a)
    q = np.stack(arrs) if arrs else np.empty((0, n, 3))  # (series, label, 3)
    ok = np.all(np.isfinite(q), axis=2)
    dropped = int(ok.size - ok.sum())
    row, gap = 12.0, 10.0
    band = ns * row + gap
    width = int(width)
    texts = [_fit(s, width * 0.4) for s in labs]
    left = 12 + max([40.0] + [_text_w(t) + 8 for t in texts])
    right = width - 24.0
    leg, leg_y = _legend(names, left, 40, right) if names else ([], 28.0)
    if height is None:
        height = max(int(math.ceil(leg_y + 12 + max(n, 2) * band + 50)), MIN_HEIGHT)
    width, height = _size(width, height)
    notes = [_dropped(dropped, "range")] if dropped else []
    parts = _open(width, height, title) + leg
    top = leg_y + 12
    bottom = max(height - 50.0, top + 20)
    parts.append(_text((left + right) / 2, bottom + 32, _fit(_clean(xlabel), right - left),
                       anchor="middle", fill=INK, cls="xlabel"))
    if n == 0 or ns == 0 or not ok.any():
        _no_data(parts, left, top, right, bottom)
        return _close(parts, width, height, notes)

    lo, hi = _value_domain(q[ok], include_zero=False)
    xs, xt, xlab = _x_ticks(lo, hi, left, right, fmt)
    _x_axis(parts, xt, xlab, xs, top, bottom)
    if xt[0] < 0 < xt[-1]:
        parts.append(_line(xs(0.0), top, xs(0.0), bottom, stroke=AXIS, cls="zero"))
    band = (bottom - top) / n
    row = (band - min(gap, band * 0.3)) / ns
    for i, (lab, text) in enumerate(zip(labs, texts)):
        yb = top + i * band
        if i:
            parts.append(_line(left - 8, yb, right, yb, stroke=GRID, cls="separator"))
        parts.append(_text(left - 8, yb + band / 2 + 4, text, anchor="end", fill=INK, cls="label",
                           tooltip=lab if text != lab else None))
        for j, name in enumerate(names):
            if not ok[j, i]:
                continue
            p10, p50, p90 = (float(t) for t in q[j, i])
            yc = yb + (band - ns * row) / 2 + (j + 0.5) * row
            a, b = xs(min(p10, p90)), xs(max(p10, p90))
            h = max(min(row * 0.5, 6.0), 1.0)
            tip = (f"{name}: p10 {_clean(fmt.format(p10))}, median {_clean(fmt.format(p50))}, "
                   f"p90 {_clean(fmt.format(p90))}")
            parts.append(_rect(a, yc - h / 2, b - a, h, _colour(j), cls="range", tooltip=tip))
            xm = xs(p50)
            hm = max(min(row * 0.9, 12.0), 2.0)
            parts.append(_line(xm, yc - hm / 2, xm, yc + hm / 2, stroke=INK, width=2, cls="median"))
    return _close(parts, width, height, notes)


# ----------------------------------------------------------------------------- scatter

def _log_labels(ticks: list[float]) -> list[str]:
    """Labels of log10 ticks (integer exponents k): the value 10^k, compact."""
    out = []
    for k in ticks:
        if -4 <= k <= 15:
            out.append(_compact(10.0 ** k))
        else:
            out.append(f"1e{int(k)}")
    return out


def scatter(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, title: str,
            xlabel: str, ylabel: str, width: int = 480, height: int = 400, diagonal: bool = False,
            max_points: int = 4000, log: bool = False) -> str:
    """Points (x_i, y_i), e.g. one per household.

    Parameters
    ----------
    x, y : arrays of shape (m,), in the units the labels name. A pair with a NaN/inf is
        dropped; with ``log=True`` so is a pair with a value <= 0; both are counted in the
        footnote (as points).
    title, xlabel, ylabel : texts. width, height : px.
    diagonal : draw the line y = x (``<line class="diagonal">``) where it crosses the plot;
        if it misses the plot entirely the footnote says so.
    max_points : at most this many points are drawn. Above it, a deterministic subsample:
        the points sorted by x (stable, ties by index), then evenly spaced ranks
        ``floor(k (m - 1) / (max_points - 1))``; the footnote says "showing N of M points".
    log : log10 axes; ticks at powers of ten.

    Returns
    -------
    str : the SVG document; one ``<circle class="point">`` per drawn point, in input order.
    """
    width, height = _size(width, height)
    if int(max_points) < 1:
        raise ValueError(f"max_points: {max_points}, expected >= 1")
    max_points = int(max_points)
    xv = np.asarray(x, dtype=float).ravel()
    yv = np.asarray(y, dtype=float).ravel()
    if xv.shape != yv.shape:
        raise ValueError(f"x and y: shapes {xv.shape} and {yv.shape} differ")
    ok = np.isfinite(xv) & np.isfinite(yv)
    notes = []
    if (~ok).any():
        notes.append(_dropped(int((~ok).sum()), "point"))
    xv, yv = xv[ok], yv[ok]
    if log:
        pos = (xv > 0) & (yv > 0)
        if (~pos).any():
            notes.append(f"{_plural(int((~pos).sum()), 'non-positive point')} not shown (log axes)")
        xv, yv = np.log10(xv[pos]), np.log10(yv[pos])
    m = xv.size
    if m > max_points:
        order = np.argsort(xv, kind="stable")
        ranks = (np.arange(max_points, dtype=np.int64) * (m - 1)) // max(max_points - 1, 1)
        pick = np.sort(order[ranks])
        xv, yv = xv[pick], yv[pick]
        notes.append(f"showing {max_points:,} of {m:,} points")

    parts = _open(width, height, title)
    if m:
        if log:
            xt = _nice_ticks(math.floor(xv.min()), max(math.ceil(xv.max()), math.floor(xv.min()) + 1),
                             integer=True)
            yt = _nice_ticks(math.floor(yv.min()), max(math.ceil(yv.max()), math.floor(yv.min()) + 1),
                             integer=True)
            xlab, ylab = _log_labels(xt), _log_labels(yt)
        else:
            xdom = _value_domain(xv, include_zero=False)
            yt = _nice_ticks(*_value_domain(yv, include_zero=False))
            ylab = _tick_labels(yt, None)
        left = max(44.0, 30 + max(_text_w(s) for s in ylab))
    else:
        left = 44.0
    right = width - 16.0
    top = 36.0
    bottom = max(height - 56.0, top + 20)
    _axis_labels(parts, left, right, top, bottom, xlabel, ylabel)
    if not m:
        _no_data(parts, left, top, right, bottom)
        return _close(parts, width, height, notes)

    if log:
        xs = _Scale(xt[0], xt[-1], left, right)
    else:
        xs, xt, xlab = _x_ticks(xdom[0], xdom[1], left, right, None)
    ys = _Scale(yt[0], yt[-1], bottom, top)
    _y_axis(parts, yt, ylab, ys, left, right)
    _x_axis(parts, xt, xlab, xs, top, bottom)
    parts.append(_line(left, bottom, right, bottom, stroke=AXIS, cls="axis"))
    parts.append(_line(left, top, left, bottom, stroke=AXIS, cls="axis"))
    parts.append(f'<g fill="{PALETTE[0]}" fill-opacity="0.55">')
    for a, b in zip(xv.tolist(), yv.tolist()):
        parts.append(f'<circle class="point" cx="{_f(xs(a))}" cy="{_f(ys(b))}" r="2.5"/>')
    parts.append("</g>")
    if diagonal:
        lo, hi = max(xt[0], yt[0]), min(xt[-1], yt[-1])
        if lo < hi:
            parts.append(_line(xs(lo), ys(lo), xs(hi), ys(hi), stroke=INK, width=1, dash="4 3",
                               cls="diagonal"))
            parts.append(_text(xs(hi) - 6, ys(hi) - 4, "y = x", anchor="end", fill=MUTED,
                               cls="diagonal-label"))
        else:
            notes.append("y = x lies outside the plotted range")
    return _close(parts, width, height, notes)


# ----------------------------------------------------------------------------- embedding

def data_uri(svg: str) -> str:
    """``svg`` as a ``data:image/svg+xml;base64,...`` URI (UTF-8) for ``<img src=...>``."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
