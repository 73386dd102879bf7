"""normalize: label-free z-scoring (normalize.scope) of the feature table.

    python -m stages.normalize IN_PARQUET OUT_PARQUET
"""

import argparse

from pipeline.features import normalize, read_table, write_table
from stages.common import params

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features")
    parser.add_argument("out")
    args = parser.parse_args()
    p = params()
    write_table(normalize(read_table(args.features), p.normalize.scope), args.out)
    print(f"normalized ({p.normalize.scope}) -> {args.out}")
