"""normalize: label-free z-scoring (normalize.scope) of the feature table.

    python -m stages.normalize IN_PARQUET OUT_PARQUET
"""

from pipeline.features import normalize, read_table, write_table
from stages.common import params, paths, spec, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "features", "out")
    p = params()
    with user_errors():
        table = read_table(args.features, spec(p))
    write_table(normalize(table, p.normalize.scope), args.out, spec(p))
    print(f"normalized ({p.normalize.scope}) -> {args.out}")
