"""Wall time and peak memory of a whole synthetic subject at the participant level.

Writes ``msqmri-synth --size SIZE --subjects 1`` to a temporary folder and runs the
participant level (all models, computed brain mask and tissue segmentation, provided lesion
mask), printing the time of each logged stage and the peak resident memory.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

from bids_app.cli.run import main as msqmri
from bids_app.synth.cli import main as synth


class _Laps(logging.Handler):
    """Collect (elapsed seconds, message) for each INFO record."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.t0, self.laps = time.perf_counter(), []

    def emit(self, record):
        self.laps.append((time.perf_counter() - self.t0, record.getMessage()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="brain", choices=("tiny", "small", "brain"))
    p.add_argument("--nprocs", type=int, default=1)
    p.add_argument("--tissue", action="store_true", help="use the provided tissue derivative")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bids, out = Path(tmp) / "bids", Path(tmp) / "out"
        t = time.perf_counter()
        synth([str(bids), "--size", args.size, "--subjects", "1", "--seed", "5"])
        print(f"msqmri-synth --size {args.size}: {time.perf_counter() - t:.1f} s")
        derivs = [f"lesions={bids / 'derivatives' / 'lesions'}"]
        if args.tissue:
            derivs.append(f"tissue={bids / 'derivatives' / 'tissue'}")
        laps = _Laps()
        logging.getLogger().addHandler(laps)  # the CLI resets the bids_app handlers
        code = msqmri(
            [
                str(bids),
                str(out),
                "participant",
                "--skip-bids-validation",
                "--no-reports",
                "--nprocs",
                str(args.nprocs),
                "--derivatives",
                *derivs,
            ]
        )
        prev = 0.0
        for elapsed, msg in laps.laps:
            print(f"{elapsed:8.1f} s (+{elapsed - prev:6.1f})  {msg[:90]}")
            prev = elapsed
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"exit {code}; participant level {prev:.1f} s; peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
