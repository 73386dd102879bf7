"""normalize: label-free z-scoring (normalize.scope) of the feature table.

    python -m stages.normalize IN_PARQUET OUT_PARQUET
"""

from pipeline.features import normalize, read_table, write_table
from stages.common import params, paths

if __name__ == "__main__":
    args = paths(__doc__, "features", "out")
    p = params()
    write_table(normalize(read_table(args.features), p.normalize.scope), args.out)
    print(f"normalized ({p.normalize.scope}) -> {args.out}")
