"""Group level on seeded table-level simulations: wall time and Cohen's d against truth.

Usage: ``python benchmarks/bench_group.py [--participants 200 1000] [--combat]``
Prints, per size, the wall time of :func:`bids_app.group.run_group` (6 maps x 7 regions,
covariates age and sex) and the NAWM Cohen's d against the simulated truth (-0.8).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app.group import run_group
from bids_app.schema import REGION_COLUMNS

MAPS = ("MTRmap", "T1map", "R2starmap", "MTsat", "MWFmap", "Chimap")
REGIONS = ("lesion", "NAWM", "NAGM", "WM", "GM", "CSF", "perilesional_1mm")
D_TRUE = -0.8


def simulate(root: Path, n: int, rng: np.random.Generator) -> tuple[Path, Path]:
    bids, out = root / "bids", root / "out"
    bids.mkdir()
    part = pd.DataFrame(
        {
            "participant_id": [f"sub-{k:04d}" for k in range(n)],
            "group": ["patient" if k % 2 == 0 else "control" for k in range(n)],
            "age": rng.integers(20, 60, n),
            "sex": rng.choice(["F", "M"], n),
            "site": rng.choice(["A", "B", "C"], n),
        }
    )
    part.to_csv(bids / "participants.tsv", sep="\t", index=False)
    for row in part.itertuples():
        shift = D_TRUE if row.group == "patient" else 0.0
        rows = [
            {"participant_id": row.participant_id, "session_id": None, "map": m,
             "units": "percent", "space": "FLAIR", "region": r, "n_voxels": 100,
             "volume_mm3": 800.0, "mean": 31.0 + (shift if r == "NAWM" else 0) + rng.normal(),
             "median": 0.0, "std": 1.0, "p05": 0.0, "p95": 0.0, "n_invalid": 0}
            for m in MAPS for r in REGIONS
        ]  # fmt: skip
        (out / row.participant_id).mkdir(parents=True)
        pd.DataFrame(rows, columns=list(REGION_COLUMNS)).to_csv(
            out / row.participant_id / f"{row.participant_id}_desc-regions_stats.tsv",
            sep="\t", index=False, na_rep="n/a",
        )  # fmt: skip
    return bids, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--participants", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--combat", action="store_true", help="also --harmonize combat")
    args = parser.parse_args()
    for n in args.participants:
        with tempfile.TemporaryDirectory() as tmp:
            bids, out = simulate(Path(tmp), n, np.random.default_rng(n))
            opts = {"covariates": ["age", "sex"]}
            if args.combat:
                opts["harmonize"] = "combat"
            start = time.perf_counter()
            run_group(bids, out, reports=False, options=opts)
            took = time.perf_counter() - start
            s = pd.read_csv(out / "group_desc-summary_stats.tsv", sep="\t")
            d = s.loc[s["region"] == "NAWM", "cohens_d"].to_numpy()
            print(
                f"{n} participants x {len(MAPS)} maps x {len(REGIONS)} regions: group level "
                f"{took:.1f} s; NAWM d {d.mean():.3f} (truth {D_TRUE}, max |error| "
                f"{np.abs(d - D_TRUE).max():.3f})"
            )


if __name__ == "__main__":
    main()
