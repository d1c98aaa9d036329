"""Report plots: one dot per finite value, group means, deterministic output; escaping."""

from html import escape as html_escape

import numpy as np

from bids_app.reports.figures import mosaic, svg_figure
from bids_app.reports.plots import dot_plot


def test_dot_plot_draws_every_finite_value_and_group_means():
    cols = {
        "lesion": [(1.3, "patient", "sub-01"), (1.2, "patient", "sub-03")],
        "NAWM": [(0.85, "patient", "sub-01"), (0.84, "control", "sub-02"), (np.nan, None, "x")],
        "NAGM": [],
    }
    svg = dot_plot(cols, title="T1map", units="s")
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert svg.count("<circle") == 4  # the NaN is not drawn
    assert svg.count('stroke-width="2"') == 3  # means: lesion patients, NAWM patients/controls
    assert "sub-02: 0.84" in svg
    assert dot_plot(cols, title="T1map", units="s") == svg  # deterministic jitter


def test_dot_plot_without_values():
    svg = dot_plot({"lesion": [(np.nan, None, "a")]}, title="MTRmap", units="percent")
    assert "no finite values" in svg
    assert "<circle" not in svg


def test_mosaic_outline_and_svg_figure():
    vol = np.zeros((10, 12, 8))
    vol[3:7, 3:9, :] = 1.0
    lesion = np.zeros(vol.shape, bool)
    lesion[4:6, 4:6, 2:6] = True
    rgb = mosaic(vol, outline=lesion, n_slices=3)
    assert rgb.shape == (12, 30, 3)
    assert ((rgb == (230, 30, 30)).all(axis=-1)).any()  # the lesion border is drawn in red
    assert "data:image/png;base64," in svg_figure(rgb, "T1map [s]")


def test_participant_report_escapes_names(tmp_path):
    """A map key, units, sources and subject label with ``"``, ``<`` and ``&`` stay text."""
    from html.parser import HTMLParser
    from types import SimpleNamespace

    from bids_app.reports.html import participant_report

    nasty = 'a"b<c>&d'
    vol = np.zeros((6, 6, 6))
    vol[2:4, 2:4, :] = 1.0
    rec = SimpleNamespace(key=f"desc-{nasty}_T1map", units=nasty, data_ref=None, native=vol)
    ctx = SimpleNamespace(
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
    text = participant_report(ctx).read_text()
    assert nasty not in text
    assert html_escape(nasty) in text

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
    assert [img["alt"] for img in parser.imgs] == [rec.key]
    assert (tmp_path / parser.imgs[0]["src"]).is_file()
    assert f"msqmri: sub-01 {nasty}" in parser.data
    svg = (tmp_path / parser.imgs[0]["src"]).read_text()
    assert nasty not in svg
    assert html_escape(f"{rec.key} [{nasty}]") in svg


def test_report_lists_each_rim_lesion_candidate():
    import pandas as pd

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
