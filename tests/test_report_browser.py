"""Acceptance: the participant and group reports render in headless Chromium, offline.

A small synthetic run (``msqmri-synth --size tiny --series --subjects 3 --sessions 2``, the
participant level for sub-01 and sub-02 with ``--models mtr vfa_t1``, then the group
level) writes the reports; each page is screenshotted (PNG, must not be blank), its DOM
dumped (the expected sections must exist) and parsed for external resources (none allowed:
a report copied alone must open offline). sub-03 is never run: the group report must list
it as missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
#: section ids each page must have (templates/participant.html.j2, group.html.j2)
PARTICIPANT_SECTIONS = (
    "summary", "warnings", "anatomy", "maps", "quality", "regions", "lesions", "provenance",
)  # fmt: skip
GROUP_SECTIONS = ("participants", "lesionload", "groups", "effectsizes", "longitudinal", "tables")
#: tag -> attributes that load a resource
RESOURCE_ATTRS = {
    "script": ("src",), "link": ("href",), "img": ("src", "srcset"), "iframe": ("src",),
    "source": ("src", "srcset"), "video": ("src", "poster"), "audio": ("src",),
    "embed": ("src",), "object": ("data",), "image": ("href", "xlink:href"), "use": ("href",),
}  # fmt: skip


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (install the Debian package chromium; .ci/run does)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The synthetic run: returns the output directory."""
    if _browser() is None:
        pytest.skip("no headless browser (install the Debian package chromium; .ci/run does)")
    from bids_app.cli.run import main
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("report_browser")
    bids, out = root / "bids", root / "out"
    assert synth([str(bids), "--size", "tiny", "--series", "--subjects", "3",
                  "--sessions", "2"]) == 0  # fmt: skip
    code = main([str(bids), str(out), "participant", "group", "--participant-label", "01",
                 "02", "--models", "mtr", "vfa_t1"])  # fmt: skip
    assert code == 0
    return out


class _Resources(HTMLParser):
    """Every resource URL a page loads, and every ``url(...)`` in its style sheets."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self._style = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in RESOURCE_ATTRS.get(tag, ()) and value:
                self.urls.append(value)
            if name == "style" and value:
                self.urls += re.findall(r"url\(([^)]*)\)", value)
        self._style = tag == "style"

    def handle_data(self, data):
        if self._style:
            self.urls += re.findall(r"url\(([^)]*)\)|@import\s+['\"]?([^'\";]+)", data)

    def handle_endtag(self, tag):
        self._style = False


def _external(urls) -> list[str]:
    flat = [u for x in urls for u in (x if isinstance(x, tuple) else (x,)) if u]
    return [u for u in flat if not u.strip().strip("'\"").startswith("data:")]


def _screenshot(page: Path, png: Path) -> np.ndarray:
    res = _chromium(f"--screenshot={png}", "--window-size=1280,2400", page.as_uri())
    assert png.is_file(), res.stderr[-2000:]
    import imageio.v3 as iio

    return np.asarray(iio.imread(png), dtype=float)


def _dom(page: Path) -> str:
    res = _chromium("--dump-dom", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _ids(dom: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)"', dom))


@pytest.mark.parametrize("name", ["sub-01_ses-01.html", "group.html"])
def test_report_screenshot_is_not_blank(reports, name, tmp_path):
    img = _screenshot(reports / name, tmp_path / f"{name}.png")
    grey = img[..., :3].mean(axis=-1)
    # a blank (white) page has zero variance; text, tables and figures give thousands
    assert grey.var() > 100.0, f"{name}: pixel variance {grey.var():.1f}"
    # the figures draw colour (viridis maps, red/blue groups): not only black and white
    assert (np.ptp(img[..., :3], axis=-1) > 60).sum() > 1000


def test_participant_dom_has_the_sections_and_figures(reports):
    dom = _dom(reports / "sub-01_ses-01.html")
    assert set(PARTICIPANT_SECTIONS) <= _ids(dom)
    assert "Report problem" not in dom  # every figure was drawn
    n_img = len(re.findall(r"<img [^>]*src=\"data:image/svg\+xml;base64,", dom))
    figures = sorted((reports / "sub-01" / "ses-01" / "figures").glob("*.svg"))
    assert n_img == len(figures) > 0  # every figure file embedded once
    names = {f.name for f in figures}
    assert "sub-01_ses-01_desc-brain_mask.svg" in names
    assert any(n.endswith("_desc-mosaic_MTRmap.svg") for n in names)
    assert any("histogram" in n for n in names)
    assert any("rmse" in n for n in names)  # the vfa_t1 fit-quality map
    assert any(n.startswith("sub-01_ses-01_desc-coreg") for n in names)
    # the per-lesion table: one row per lesion of the lesions table
    import pandas as pd

    les = pd.read_csv(
        reports / "sub-01" / "ses-01" / "sub-01_ses-01_desc-lesions_stats.tsv", sep="\t"
    )
    section = dom.split('<section id="lesions">')[1].split("</section>")[0]
    assert section.count("<tr") - 1 == les["lesion_id"].nunique() > 0
    assert "MTRmap [percent]" in section
    prov = dom.split('<section id="provenance">')[1].split("</section>")[0]
    assert "bids:raw:sub-01/ses-01/anat/sub-01_ses-01_flip-1_VFA.nii.gz" in prov
    assert "Policy" in prov


def test_group_dom_lists_participants_links_and_missing(reports):
    dom = _dom(reports / "group.html")
    assert set(GROUP_SECTIONS) <= _ids(dom)
    assert "Report problem" not in dom
    assert re.search(r"sub-03_ses-01\s*\(missing", dom)  # named up front, not only listed
    assert "None" not in dom.split('<section id="participants">')[1].split("</section>")[0]
    for label in ("sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01", "sub-02_ses-02"):
        assert f'href="{label}.html"' in dom
        assert (reports / f"{label}.html").is_file()
    rows = re.findall(r'<tr class="status-(\w+)"><td>(sub-\d+)</td><td>([^<]*)</td>', dom)
    assert sorted(rows) == [
        ("missing", "sub-03", "ses-01"), ("missing", "sub-03", "ses-02"),
        ("ok", "sub-01", "ses-01"), ("ok", "sub-01", "ses-02"),
        ("ok", "sub-02", "ses-01"), ("ok", "sub-02", "ses-02"),
    ]  # fmt: skip
    figs = {f.name for f in (reports / "figures").glob("group_desc-*.svg")}
    assert {"group_desc-MTRmap_boxplot.svg", "group_desc-lesionload_boxplot.svg"} <= figs
    assert "group_desc-MTRmap_trajectories.svg" in figs  # two sessions per subject


@pytest.mark.parametrize("name", ["sub-01_ses-01.html", "group.html"])
def test_reports_open_offline(reports, name, tmp_path):
    text = (reports / name).read_text()
    parser = _Resources()
    parser.feed(text)
    assert parser.urls  # the figures are there, as data: URIs
    assert _external(parser.urls) == []
    # nor do the embedded SVG figures load anything
    import base64

    for uri in parser.urls:
        if uri.startswith("data:image/svg+xml;base64,"):
            inner = _Resources()
            inner.feed(base64.b64decode(uri.split(",", 1)[1]).decode())
            assert _external(inner.urls) == []
    # copied alone, the page still shows every figure: same DOM from another folder
    alone = tmp_path / name
    shutil.copy(reports / name, alone)
    assert _dom(alone).count("<img") == _dom(reports / name).count("<img")


def test_a_failing_report_never_fails_the_run(reports, tmp_path, monkeypatch, caplog):
    """NiPreps habit: a report that raises is logged; the outputs and exit code stand."""
    import bids_app.group
    import bids_app.reports.html
    from bids_app.cli.run import main

    def broken(*args, **kwargs):
        raise RuntimeError("report exploded")

    monkeypatch.setattr(bids_app.reports.html, "participant_report", broken)
    monkeypatch.setattr(bids_app.group, "group_report", broken)
    out = tmp_path / "out"
    code = main([str(reports.parent / "bids"), str(out), "participant", "group",
                 "--participant-label", "03", "--session-label", "01",
                 "--models", "mtr"])  # fmt: skip
    assert code == 0
    assert (out / "sub-03" / "ses-01" / "sub-03_ses-01_desc-regions_stats.tsv").is_file()
    assert (out / "group_desc-summary_stats.tsv").is_file()
    assert not list(out.glob("*.html"))
    messages = [r.getMessage() for r in caplog.records]
    assert "sub-03_ses-01: report failed (see log)" in messages
    assert "group report failed (see log)" in messages
