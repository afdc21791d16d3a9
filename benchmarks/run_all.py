"""Benchmarks that back edgepipe's speed claims (run with `make bench`).

runner_noop: how long `edgepipe run` takes when every stage is up to date (the "rerun with nothing
changed" figure), as the median of several runs of the real console script on the smoke recipe.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("edgepipe")


def runner_noop(repeats: int = 7) -> dict:
    with tempfile.TemporaryDirectory() as root:
        recipe = REPO / "recipes" / "smoke.yaml"
        subprocess.run([EXE, "run", recipe], cwd=root, check=True, capture_output=True)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            p = subprocess.run([EXE, "run", recipe], cwd=root, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            assert " 0 ran" in p.stdout, p.stdout
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


def main() -> None:
    os.environ.setdefault("EDGEPIPE_DATA_MIRROR", str(REPO.parent / "shared" / "datasets"))
    r = runner_noop()
    print(f"runner_noop (smoke recipe, all stages fresh): median {r['median_s']:.3f} s over {r['runs']} runs "
          f"(min {r['min_s']:.3f}, max {r['max_s']:.3f})")


if __name__ == "__main__":
    main()
