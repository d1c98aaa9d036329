"""Report pieces: matplotlib figures, the per-lesion table, escaping, participant status."""

import base64
from html import escape as html_escape
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bids_app.reports.figures import histogram_figure, mosaic_figure, pick_slices
from bids_app.reports.group_figures import forest_figure, region_figure
from bids_app.reports.render import cell, figure_svg, save_figure, table


def _lesion_volume():
    vol = np.full((20, 24, 16), np.nan)
    vol[3:17, 3:21, 2:14] = 1.0
    lesion = np.zeros(vol.shape, bool)
    lesion[8:12, 8:12, 6:10] = True
    vol[lesion] = 2.0
    return vol, lesion


def test_pick_slices_spread_over_the_data():
    vol, _ = _lesion_volume()
    zs = pick_slices(vol, 4)
    assert zs.min() >= 2
    assert zs.max() <= 13
    assert len(zs) == 4
    assert np.all(np.diff(zs) > 0)


def test_mosaic_has_a_colour_bar_with_units_and_lesion_contours():
    vol, lesion = _lesion_volume()
    fig = mosaic_figure(vol, units="percent", lesion=lesion, n_slices=4)
    (ax,) = [ax for ax in fig.axes if ax.images]
    colorbar = ax.images[0].colorbar
    assert colorbar is not None
    assert colorbar.ax.get_ylabel() == "percent"
    shown = [int(t.get_text().removeprefix("z=")) for t in ax.texts]
    assert len(shown) == 4
    assert sum(lesion[:, :, z].any() for z in shown) >= 2  # half go where the lesions are
    # one tile per slice, a column apart; the lesion contour is red and lies on the lesion
    row = ax.images[0].get_array()
    assert row.shape == (24, 4 * 21 - 1)
    (contour,) = ax.collections
    colour = contour.get_edgecolor()[0]
    assert colour[0] > 0.9
    assert colour[1] < 0.2
    xy = np.concatenate([p.vertices for p in contour.get_paths()])
    assert len(xy) > 0
    tiles = (xy[:, 0] // 21).astype(int)
    for t in np.unique(tiles):
        assert lesion[:, :, shown[t]].any()  # contours only on slices that cut the lesion
    svg = figure_svg(fig).decode()
    assert svg.startswith("<?xml")
    assert "<image" in svg  # the slices, embedded as PNG inside the SVG


def test_histogram_by_region_counts_the_finite_voxels():
    vol, lesion = _lesion_volume()
    nawm = np.isfinite(vol) & ~lesion
    fig = histogram_figure(vol, {"lesion": lesion, "NAWM": nawm}, units="s")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"lesion (n={lesion.sum()})", f"NAWM (n={nawm.sum()})"]
    assert fig.axes[0].get_xlabel() == "s"


def test_save_figure_writes_the_file_it_embeds(tmp_path):
    vol, _ = _lesion_volume()
    path = tmp_path / "sub-01" / "figures" / "sub-01_desc-mosaic_T1map.svg"
    fig = save_figure(lambda: mosaic_figure(vol, units="s"), path, "T1map", root=tmp_path)
    assert fig.path == "sub-01/figures/sub-01_desc-mosaic_T1map.svg"
    assert fig.uri.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(fig.uri.split(",", 1)[1]) == path.read_bytes()


def test_region_figure_draws_every_subject_once():
    rows = [
        ("lesion", 1.3, "patient"), ("lesion", 1.2, "patient"), ("NAWM", 0.85, "patient"),
        ("NAWM", 0.84, "control"), ("NAWM", np.nan, None), ("NAGM", 1.1, None),
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=["region", "mean", "_role"])
    fig = region_figure(df, title="T1map", units="s", regions=("lesion", "NAWM", "NAGM"))
    points = [sum(len(c.get_offsets()) for c in ax.collections) for ax in fig.axes]
    assert points == [2, 2, 1]  # the NaN is not drawn
    assert fig.axes[0].get_ylabel() == "s"


def test_forest_plot_draws_the_finite_effect_sizes_with_their_ci():
    summary = pd.DataFrame(
        {
            "map": ["T1map", "T1map", "MTRmap"],
            "region": ["NAWM", "lesion", "NAWM"],
            "session_id": ["n/a"] * 3,
            "cohens_d": [0.8, np.nan, -1.2],
            "cohens_d_ci_low": [0.1, np.nan, -2.0],
            "cohens_d_ci_high": [1.5, np.nan, -0.4],
        }
    )
    ax = forest_figure(summary).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MTRmap NAWM", "T1map NAWM"]
    line = ax.lines[0]  # the points, top to bottom
    assert sorted(line.get_xdata().tolist()) == [-1.2, 0.8]
    segments = ax.collections[0].get_segments()  # the CI bars
    spans = sorted((float(s[0][0]), float(s[1][0])) for s in segments)
    assert spans == [(-2.0, -0.4), (pytest.approx(0.1), pytest.approx(1.5))]


def test_table_cells_show_missing_values_as_na():
    df = pd.DataFrame({"a": [1.23456, np.nan], "b": [None, "<x>"]})
    html = str(table(df))
    assert "1.235" in html
    assert html.count("n/a") == 2
    assert "None" not in html
    assert "&lt;x&gt;" in html
    assert cell("") == "n/a"


def _ctx(tmp_path, nasty):
    vol = np.zeros((6, 6, 6))
    vol[2:4, 2:4, :] = 1.0
    rec = SimpleNamespace(
        key=f"desc-{nasty}_T1map", units=nasty, data_ref=None, native=vol, model="vfa_t1",
        entities={"subject": "01"}, suffix="T1map",
        sidecar={"B1Correction": {"Policy": "auto", "Applied": False, "Reason": "no B1 map"}},
    )  # fmt: skip
    return SimpleNamespace(
        cfg=SimpleNamespace(output_dir=tmp_path),
        subject="01",
        session=None,
        label=f"sub-01 {nasty}",
        reference_name=nasty,
        brain_mask_source=nasty,
        tissue_source=nasty,
        lesion_source=nasty,
        skipped=[nasty],
        warnings=[nasty],
        registrations={},
        lesion_mask=None,
        maps=[rec],
    )


def test_participant_report_escapes_names_and_shows_warnings(tmp_path):
    """A map key, units, sources and subject label with ``"``, ``<`` and ``&`` stay text."""
    from html.parser import HTMLParser

    from bids_app.reports.html import participant_report

    nasty = 'a"b<c>&d'
    ctx = _ctx(tmp_path, nasty)
    text = participant_report(ctx).read_text()
    assert nasty not in text
    assert html_escape(nasty).replace("&quot;", "&#34;") in text  # markupsafe's quote

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.data = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs))

        def handle_data(self, data):
            self.data.append(data)

    parser = Collect()
    parser.feed(text)
    # the parser gives back the exact strings: nothing leaked into markup
    assert [img["alt"] for img in parser.imgs] == [f"{ctx.maps[0].key} [{nasty}]"]
    assert (tmp_path / parser.imgs[0]["title"]).is_file()  # the figures/ derivative
    assert parser.imgs[0]["src"].startswith("data:image/svg+xml;base64,")
    joined = "".join(parser.data)
    assert f"msqmri: sub-01 {nasty}" in parser.data
    assert "vfa_t1: B1 not applied (policy auto): no B1 map" in joined
    assert "Warning" in joined


def test_a_failing_figure_is_listed_not_fatal(tmp_path, monkeypatch):
    from bids_app.reports import participant

    def broken(*args, **kwargs):
        raise RuntimeError("no figure today")

    monkeypatch.setattr(participant, "mosaic_figure", broken)
    text = participant.participant_report(_ctx(tmp_path, "x")).read_text()
    assert "Report problem" in text
    assert "no figure today" in text


def test_report_lists_each_rim_lesion_candidate():
    from bids_app.reports.html import _rim_candidates

    rows = [
        {"lesion_id": i, "map": m, "volume_mm3": 100.0 * i, "rim_index": r, "prl_candidate": c}
        for i, r, c in ((1, 0.8, 1), (2, 0.1, 0), (3, 0.6, 1))
        for m in ("Chimap", "T1map")
    ]
    html = _rim_candidates(pd.DataFrame(rows))
    assert "2 of 3 lesions" in html
    assert "0.8" in html
    assert "0.6" in html
    assert "0.1" not in html
    none = _rim_candidates(pd.DataFrame([{**rows[2], "prl_candidate": 0}]))
    assert "No candidate among 1 lesions" in none
    assert _rim_candidates(pd.DataFrame([{"lesion_id": 1, "map": "T1map"}])) == ""


def test_lesion_table_has_one_row_per_lesion_and_a_column_per_map():
    from bids_app.reports.participant import lesion_table

    rows = [
        {"lesion_id": i, "volume_mm3": 64.0 * i, "location": "juxtacortical", "map": m,
         "units": u, "mean": v * i, "prl_candidate": 1 if (m == "Chimap" and i == 2) else 0}
        for i in (1, 2)
        for m, u, v in (("T1map", "s", 1.5), ("Chimap", "ppm", 0.01))
    ]  # fmt: skip
    wide = lesion_table(pd.DataFrame(rows))
    assert wide["lesion_id"].tolist() == [1, 2]
    assert wide["T1map [s]"].tolist() == [1.5, 3.0]
    assert wide["Chimap [ppm]"].tolist() == [0.01, 0.02]
    assert wide["prl_candidate"].tolist() == [0, 1]


def test_group_participants_list_ok_failed_missing_and_links(tmp_path):
    from bids_app.failures import record_failure
    from bids_app.reports.group import participants_rows
    from bids_app.schema import group_role

    bids = tmp_path / "bids"
    for sub in ("sub-01", "sub-02", "sub-03"):
        (bids / sub / "anat").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01.html").write_text("<html></html>")
    record_failure(out, "02", None, 65, ValueError("bad FlipAngle"))
    counts = pd.DataFrame(
        {"participant_id": ["sub-01"], "session_id": [np.nan], "group": ["patient"],
         "n_lesions": [3], "lesion_volume_mm3": [1234.0]}
    )  # fmt: skip
    rows = participants_rows(out, counts, bids, group_role)
    assert [(r["participant_id"], r["session_id"], r["status"]) for r in rows] == [
        ("sub-01", "n/a", "ok"), ("sub-02", "n/a", "failed"), ("sub-03", "n/a", "missing"),
    ]  # fmt: skip
    assert rows[0]["report"] == "sub-01.html"
    assert rows[0]["n_lesions"] == "3"
    assert rows[0]["lesion_volume_mm3"] == "1234"
    assert rows[1]["report"] is None
    assert "exit 65: bad FlipAngle" in rows[1]["reason"]
