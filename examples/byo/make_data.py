"""Write the example's site CSV files: ``python make_data.py --sites 6 --out data``."""

import argparse
from pathlib import Path

from byo_example.data import make_sites

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--sites", type=int, default=6)
parser.add_argument("--out", type=Path, default=Path("data"))
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
for path in make_sites(args.out, args.sites, args.seed):
    print(path)
