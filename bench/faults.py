"""What an unarmed fault point costs on the paths that call it.

Times ``faults.point()`` with nothing armed (as in production) against an
empty function call, in a fresh interpreter without STAGERD_TEST_FAULTS.

    python bench/faults.py [--n 2000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

MEASURE = """
import timeit
from stagerd.core import faults

def nothing(name):
    pass

n = {n}
point = min(timeit.repeat(lambda: faults.point("store.delete"), number=n, repeat=5))
empty = min(timeit.repeat(lambda: nothing("store.delete"), number=n, repeat=5))
print(f"unarmed fault point: {{point / n * 1e9:.1f}} ns per call "
      f"(an empty function call: {{empty / n * 1e9:.1f}} ns)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "STAGERD_TEST_FAULTS"}
    subprocess.run([sys.executable, "-c", MEASURE.format(n=args.n)], env=env,
                   check=True)


if __name__ == "__main__":
    main()
