"""Run a lesson at several seeds and save its recorded figures: labkit/assets/results/seeds_<lesson>.json.

    python scripts/seed_spread.py notebooks/08_reward_model_rlhf.ipynb             # SEED = 0, 1, 2, defaults
    python scripts/seed_spread.py notebooks/09_dpo.ipynb --seeds 0,1,2,3,4 --keep out/seeds
    python scripts/seed_spread.py notebooks/11_rl_verifiable_rewards.ipynb -p MODEL /path/to/model --out s.json

Each run is the whole lesson under papermill (about a minute each on a 2-core CPU with the bundled model);
the lesson reads the file back with labkit.course.seeds and prints the spread and its verdicts.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from labkit import atomic  # noqa: E402
from labkit.course import seeds  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--seeds", default=",".join(str(s) for s in seeds.SEEDS))
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter, as papermill's -p (VALUE read as a Python literal, else a string)")
    p.add_argument("--out", type=Path, help="where to write (one notebook only); default labkit/assets/results/")
    p.add_argument("--keep", type=Path, help="keep the executed notebooks in this folder")
    a = p.parse_args(argv)
    if a.out and len(a.notebooks) > 1:
        p.error("--out takes one notebook; without it each lesson's file goes to labkit/assets/results/.")
    overrides = {name: seeds.literal(value) for name, value in a.parameter}
    for nb in a.notebooks:
        spread = seeds.run(nb, [int(s) for s in a.seeds.split(",")], parameters=overrides, out_dir=a.keep)
        out = a.out or seeds.results_file(nb.stem)
        atomic.write_json(out, spread)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
