"""Tests of rebalancer.charts: well-formed standalone SVG, marks counted by class, escaping,
NaN/inf handling, empty data, determinism, subsampling, and a property test on random input."""
from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebalancer import charts
from rebalancer.charts import bars, data_uri, histogram, ranges, scatter

NS = "{http://www.w3.org/2000/svg}"
NUMERIC = ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height")
NASTY = 'Tom & Jerry <"quoted"> \'it\''

EDGES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.3, math.inf]
SERIES = {"before": [120, 340, 560, 230, 80, 12],
          "after": [400, 500, 300, 60, 5, 0],
          "naive": [300, 420, 380, 100, 20, 3]}


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    for attr in ("width", "height", "viewBox"):
        assert attr in root.attrib
    assert root.get("role") == "img"
    assert root[0].tag == NS + "title"
    check_numbers(root)
    return root


def check_numbers(root: ET.Element) -> None:
    """Every numeric attribute is a finite number; no nan/inf anywhere in coordinates."""
    for el in root.iter():
        for name, value in el.attrib.items():
            if name in NUMERIC:
                assert "nan" not in value.lower() and "inf" not in value.lower(), (el.tag, name, value)
                assert math.isfinite(float(value)), (el.tag, name, value)
            if name == "transform":
                assert "nan" not in value.lower() and "inf" not in value.lower()


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [el for el in root.iter(NS + tag) if el.get("class") == cls]


def texts(root: ET.Element, cls: str | None = None) -> list[str]:
    return [el.text or "" for el in root.iter(NS + "text") if cls is None or el.get("class") == cls]


def footnote(root: ET.Element) -> str:
    notes = texts(root, "footnote")
    return notes[0] if notes else ""


def sample_charts() -> list[str]:
    rng = np.random.default_rng(7)
    x = rng.lognormal(7, 1, 500)
    return [
        histogram(EDGES, SERIES, title="Tracking error", xlabel="tracking error", xfmt="{:.0%}"),
        bars(["Growth", "Income", "Core"], [1234.5, -200.0, 0.0], title="Saved", xlabel="USD"),
        ranges(["Growth", "Income"], {"before": [(0.01, 0.02, 0.05), (0.0, 0.01, 0.03)],
                                      "after": [(0.001, 0.004, 0.01), (0.0, 0.002, 0.005)]},
               title="Dispersion", xlabel="tracking error"),
        scatter(x, x * rng.lognormal(0, 0.5, 500), title="Tax vs fee", xlabel="fee", ylabel="tax",
                diagonal=True),
        scatter(x, x * rng.lognormal(0, 0.5, 500), title="Tax vs fee", xlabel="fee", ylabel="tax",
                log=True),
    ]


# ----------------------------------------------------------------------------- structure

def test_every_chart_is_well_formed_with_its_title():
    for svg in sample_charts():
        root = parse(svg)
        assert root.get("xmlns") is None  # namespace declared, parsed into tags
        assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
        assert root[0].text in {"Tracking error", "Saved", "Dispersion", "Tax vs fee"}
        assert "sans-serif" in root.get("font-family")


def test_histogram_draws_bins_times_series_bars():
    root = parse(histogram(EDGES, SERIES, title="t", xlabel="x"))
    assert len(marks(root, "rect", "bar")) == 6 * 3


def test_histogram_bar_height_is_proportional_to_count():
    root = parse(histogram([0, 1, 2, 3], {"a": [10, 20, 0]}, title="t", xlabel="x"))
    h = [float(r.get("height")) for r in marks(root, "rect", "bar")]
    assert h[1] == pytest.approx(2 * h[0], abs=0.02)
    assert h[2] == 0.0
    # bars stand on the same baseline
    bottoms = {round(float(r.get("y")) + float(r.get("height")), 2) for r in marks(root, "rect", "bar")}
    assert len(bottoms) == 1


def test_histogram_open_ended_last_bin_is_labelled():
    root = parse(histogram([0, 0.1, 0.3, math.inf], {"a": [1, 2, 3]}, title="t", xlabel="x"))
    ticks = texts(root, "tick")
    assert "> 0.3" in ticks
    assert "inf" not in " ".join(ticks)


def test_histogram_rejects_bad_edges_and_shapes():
    with pytest.raises(ValueError):
        histogram([0, 2, 1], {"a": [1, 2]}, title="t", xlabel="x")
    with pytest.raises(ValueError):
        histogram([0, math.nan, 1], {"a": [1, 2]}, title="t", xlabel="x")
    with pytest.raises(ValueError):
        histogram([0, math.inf, 5], {"a": [1, 2]}, title="t", xlabel="x")
    with pytest.raises(ValueError):
        histogram([0, 1, 2], {"a": [1, 2, 3]}, title="t", xlabel="x")


def test_bars_negative_values_extend_left_of_zero():
    root = parse(bars(["up", "down"], [300.0, -100.0], title="t", xlabel="USD"))
    up, down = marks(root, "rect", "bar")
    zero = float(up.get("x"))
    assert float(down.get("x")) + float(down.get("width")) == pytest.approx(zero, abs=0.02)
    assert float(up.get("width")) == pytest.approx(3 * float(down.get("width")), abs=0.05)
    values = texts(root, "value")
    assert values == ["300", "-100"]


def test_bars_height_grows_with_the_number_of_bars():
    few = parse(bars(list("ab"), [1, 2], title="t", xlabel="x"))
    many = parse(bars([f"m{i}" for i in range(30)], np.arange(30.0), title="t", xlabel="x"))
    assert int(many.get("height")) > int(few.get("height"))
    assert len(marks(many, "rect", "bar")) == 30


def test_ranges_draw_one_range_and_median_per_label_and_series():
    labels = ["Growth", "Income", "Core"]
    series = {"before": [(0.01, 0.02, 0.05)] * 3, "after": [(0.0, 0.01, 0.02)] * 3,
              "naive": [(0.0, 0.015, 0.03)] * 3}
    root = parse(ranges(labels, series, title="t", xlabel="te"))
    rects, medians = marks(root, "rect", "range"), marks(root, "line", "median")
    assert len(rects) == len(medians) == 9
    for r, m in zip(rects, medians):
        x0, x1 = float(r.get("x")), float(r.get("x")) + float(r.get("width"))
        assert x0 <= float(m.get("x1")) <= x1
    assert [t for t in texts(root) if t in labels] == labels


# ----------------------------------------------------------------------------- escaping

def test_caller_text_is_escaped_and_round_trips():
    outs = [
        histogram([0, 1, 2], {NASTY: [1, 2]}, title=NASTY, xlabel=NASTY, ylabel=NASTY),
        bars([NASTY, "b"], [1, 2], title=NASTY, xlabel=NASTY),
        ranges([NASTY], {NASTY: [(1, 2, 3)]}, title=NASTY, xlabel=NASTY, fmt="{:.1f}"),
        scatter([1, 2], [3, 4], title=NASTY, xlabel=NASTY, ylabel=NASTY),
    ]
    for svg in outs:
        assert "<\"quoted\">" not in svg and "Tom & Jerry" not in svg
        root = parse(svg)
        assert root[0].text == NASTY
        assert texts(root).count(NASTY) >= 2


def test_text_xml_cannot_carry_is_removed():
    root = parse(bars(["a\x00b\x1f\ud800c"], [1], title="t\x07", xlabel="x"))
    assert "abc" in texts(root)
    assert root[0].text == "t"


# ----------------------------------------------------------------------------- NaN, inf, empty

def test_nan_and_inf_are_dropped_and_counted():
    root = parse(histogram([0, 1, 2, 3], {"a": [1, math.nan, 3], "b": [math.inf, -math.inf, 2]},
                           title="t", xlabel="x"))
    assert len(marks(root, "rect", "bar")) == 3
    assert footnote(root).startswith("3 values not shown")

    root = parse(bars(["a", "b", "c"], [1, math.nan, math.inf], title="t", xlabel="x"))
    assert len(marks(root, "rect", "bar")) == 1
    assert footnote(root).startswith("2 values not shown")

    root = parse(ranges(["a", "b"], {"s": [(1, 2, math.nan), (1, 2, 3)]}, title="t", xlabel="x"))
    assert len(marks(root, "rect", "range")) == 1
    assert footnote(root).startswith("1 range not shown")

    root = parse(scatter([1, math.nan, 3, 4], [1, 2, math.inf, 4], title="t", xlabel="x", ylabel="y"))
    assert len(marks(root, "circle", "point")) == 2
    assert footnote(root).startswith("2 points not shown")


def test_log_scatter_drops_non_positive_values():
    root = parse(scatter([1, 10, -1, 0, 100], [5, 50, 5, 5, 0], title="t", xlabel="x", ylabel="y",
                         log=True))
    assert len(marks(root, "circle", "point")) == 2
    assert "3 non-positive points not shown" in footnote(root)


@pytest.mark.parametrize("make", [
    lambda: histogram([], {}, title="t", xlabel="x"),
    lambda: histogram([0, 1], {"a": [math.nan]}, title="t", xlabel="x"),
    lambda: histogram([0, 1, 2], {}, title="t", xlabel="x"),
    lambda: bars([], [], title="t", xlabel="x"),
    lambda: ranges([], {}, title="t", xlabel="x"),
    lambda: ranges(["a"], {"s": [(math.nan, 1, 2)]}, title="t", xlabel="x"),
    lambda: scatter([], [], title="t", xlabel="x", ylabel="y"),
    lambda: scatter([-1, 0], [1, 2], title="t", xlabel="x", ylabel="y", log=True),
])
def test_empty_input_says_no_data(make):
    root = parse(make())
    assert texts(root, "nodata") == ["no data"]
    assert not marks(root, "rect", "bar") and not marks(root, "circle", "point")


# ----------------------------------------------------------------------------- output

def test_data_uri_decodes_to_the_svg():
    svg = histogram(EDGES, SERIES, title="Caf\u00e9 & co", xlabel="x")
    uri = data_uri(svg)
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix):]).decode("utf-8") == svg


def test_output_is_deterministic():
    assert sample_charts() == sample_charts()


def test_scatter_subsample_is_bounded_and_noted():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=10_000), rng.normal(size=10_000)
    svg = scatter(x, y, title="t", xlabel="x", ylabel="y", max_points=500)
    root = parse(svg)
    points = marks(root, "circle", "point")
    assert len(points) == 500
    assert "showing 500 of 10,000 points" in footnote(root)
    # the extremes in x are kept: the subsample spans the data
    cx = [float(p.get("cx")) for p in points]
    full = parse(scatter(x, y, title="t", xlabel="x", ylabel="y", max_points=10_000))
    fx = [float(p.get("cx")) for p in marks(full, "circle", "point")]
    assert min(cx) == min(fx) and max(cx) == max(fx)
    assert "showing" not in footnote(full)
    assert svg == scatter(x, y, title="t", xlabel="x", ylabel="y", max_points=500)


def test_diagonal_only_when_asked():
    x = [1.0, 2.0, 3.0, 4.0]
    with_d = parse(scatter(x, [2.0, 1.0, 4.0, 3.5], title="t", xlabel="x", ylabel="y", diagonal=True))
    without = parse(scatter(x, [2.0, 1.0, 4.0, 3.5], title="t", xlabel="x", ylabel="y"))
    (d,) = marks(with_d, "line", "diagonal")
    assert not marks(without, "line", "diagonal")
    # y = x goes up to the right: smaller svg y at larger svg x
    assert float(d.get("x2")) > float(d.get("x1")) and float(d.get("y2")) < float(d.get("y1"))


def test_nice_ticks_cover_the_range_with_1_2_5_steps():
    assert charts._nice_ticks(0, 0.93) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert charts._nice_ticks(3, 3)[0] < 3 < charts._nice_ticks(3, 3)[-1]
    ticks = charts._nice_ticks(-1234, 56789)
    assert ticks[0] <= -1234 and ticks[-1] >= 56789
    step = ticks[1] - ticks[0]
    assert step / 10 ** math.floor(math.log10(step)) in (1, 2, 5)


# ----------------------------------------------------------------------------- property

finite = st.floats(allow_nan=False, allow_infinity=False)
label = st.text(max_size=12)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.data())
def test_histogram_random_finite_input_is_well_formed(data):
    nb = data.draw(st.integers(0, 8))
    edges = sorted(set(data.draw(st.lists(finite, min_size=nb + 1, max_size=nb + 1))))
    nb = max(len(edges) - 1, 0)
    names = data.draw(st.lists(label, min_size=0, max_size=3))
    series = {n: data.draw(st.lists(finite, min_size=nb, max_size=nb)) for n in names}
    root = parse(histogram(edges, series, title=data.draw(label), xlabel=data.draw(label)))
    assert len(marks(root, "rect", "bar")) == (nb * len(series) if nb else 0)


@FAST
@given(st.lists(st.tuples(label, finite), max_size=12), label)
def test_bars_random_finite_input_is_well_formed(rows, title):
    parse(bars([r[0] for r in rows], [r[1] for r in rows], title=title, xlabel=title))


@FAST
@given(st.data())
def test_ranges_random_finite_input_is_well_formed(data):
    labels = data.draw(st.lists(label, max_size=5))
    names = data.draw(st.lists(label, max_size=3))
    triple = st.tuples(finite, finite, finite)
    series = {n: data.draw(st.lists(triple, min_size=len(labels), max_size=len(labels))) for n in names}
    root = parse(ranges(labels, series, title="t", xlabel="x", fmt="{:g}"))
    if labels:
        assert len(marks(root, "rect", "range")) == len(labels) * len(series)


@FAST
@given(st.lists(st.tuples(finite, finite), max_size=60), st.booleans(), st.booleans(),
       st.integers(1, 30))
def test_scatter_random_finite_input_is_well_formed(pts, diagonal, log, max_points):
    root = parse(scatter([p[0] for p in pts], [p[1] for p in pts], title="t", xlabel="x",
                         ylabel="y", diagonal=diagonal, log=log, max_points=max_points))
    assert len(marks(root, "circle", "point")) <= max_points
