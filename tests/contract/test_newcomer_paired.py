"""A paired magnitude/phase whole-volume model, written as a newcomer would (only this file).

``toy_freq`` takes the ``part-mag`` and ``part-phase`` echoes of a MEGRE collection and
returns the local frequency offset ``Δφ / (2π ΔTE)`` (Hz) of the first two echoes, minus its
mean inside the brain mask: a whole-volume step (it needs the mask), with the B0 direction in
voxel axes taken from the affine. The subject has two acquisitions (``acq-sag``, ``acq-ax``):
each magnitude collection must be paired with the phase of its own acquisition.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app.models.base import InputSpec, MetaSpec, OutputSpec, QMRIModel, registered
from tests.contract.conftest import region_rows, save

TES = (0.005, 0.010)


def _echoes(name, part):
    return InputSpec(
        name,
        {"datatype": "anat", "suffix": "MEGRE", "part": part},
        metadata=(MetaSpec("EchoTime", "time", (1e-4, 0.2)),),
        stack_along=("EchoTime",),
        index_entities=("echo",),
        n_volumes=(2, 0),
    )


class ToyFrequency(QMRIModel):
    """Demeaned frequency offset from two echoes of paired magnitude and phase."""

    name = "toy_freq"
    kind = "volume"
    description = "toy frequency offset (tests)"
    inputs = (_echoes("mag", "mag"), _echoes("phase", "phase"))
    outputs = (OutputSpec("freq", "fieldmap", "Hz", desc="toyfreq"),)

    def __init__(self, echo_times, **options):
        super().__init__(**options)
        self.echo_times = np.asarray(echo_times, float)

    @classmethod
    def from_collections(cls, collections, **options):
        te_mag, te_phase = (collections[n].values("EchoTime") for n in ("mag", "phase"))
        assert np.allclose(te_mag, te_phase)
        return cls(te_phase, **options)

    @property
    def acquisition(self):
        return {"EchoTime": self.echo_times.tolist()}

    def _fit_volume(self, data, *, mask, affine):
        self.b0_axis = int(np.argmax(np.abs(np.linalg.inv(affine[:3, :3])[:, 2])))
        phase = data["phase"]
        dphi = np.angle(np.exp(1j * (phase[..., 1] - phase[..., 0])))
        freq = dphi / (2 * np.pi * (self.echo_times[1] - self.echo_times[0]))
        freq = np.where(data["mag"][..., 0] > 0, freq, np.nan)
        return (freq - np.nanmean(freq[mask]))[..., None]


@pytest.fixture
def toy():
    with registered(ToyFrequency) as cls:
        yield cls


def _write(subject, reference, acq, slope):
    shape, affine, brain = reference
    x = np.arange(shape[0])[:, None, None] * np.ones(shape)
    freq = slope * (x - x.mean())  # Hz, zero mean along x
    d = subject / "sub-01" / "anat"
    for i, te in enumerate(TES, start=1):
        stem = f"sub-01_acq-{acq}_echo-{i}_part-"
        save(d / f"{stem}mag_MEGRE.nii.gz", np.where(brain, 500.0, 0.0), affine)
        save(d / f"{stem}phase_MEGRE.nii.gz", np.angle(np.exp(2j * np.pi * freq * te)), affine)
        for part in ("mag", "phase"):
            meta = {"EchoTime": te, "Units": "rad"} if part == "phase" else {"EchoTime": te}
            (d / f"{stem}{part}_MEGRE.json").write_text(json.dumps(meta))
    return freq


def test_paired_whole_volume_model_two_acquisitions(toy, subject, reference, run_cli):
    truth = {
        acq: _write(subject, reference, acq, slope) for acq, slope in (("ax", 0.5), ("sag", 1))
    }
    code, out = run_cli("toy_freq")
    assert code == 0  # no false "duplicated EchoTime" from mixing the two acquisitions
    brain = reference[2]
    for acq in ("ax", "sag"):
        path = out / "sub-01" / "anat" / f"sub-01_acq-{acq}_desc-toyfreq_fieldmap.nii.gz"
        got = np.asarray(nib.load(path).dataobj)
        ok = np.isfinite(got)
        assert ok.sum() > 0.9 * brain.sum()
        assert not np.isfinite(got[~brain]).any() or ok[~brain].sum() < 0.2 * ok.sum()
        # demeaned inside the computed mask: equal to the truth up to a constant
        diff = got[ok] - truth[acq][ok]
        assert np.ptp(diff) < 1e-3
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert side["Units"] == "Hz"
        assert all(f"acq-{acq}_" in s for s in side["Sources"])
        assert len(side["Sources"]) == 4
        rows = region_rows(out, f"acq-{acq}_desc-toyfreq_fieldmap")  # one row set each
        assert rows.loc["NAWM", "n_voxels"] > 0
