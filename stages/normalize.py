"""normalize: label-free z-scoring (normalize.scope) -> data/processed/features.parquet."""

from pipeline.features import normalize, read_table, write_table
from stages.common import params

IN, OUT = "data/interim/features.parquet", "data/processed/features.parquet"

if __name__ == "__main__":
    p = params()
    write_table(normalize(read_table(IN), p.normalize.scope), OUT)
    print(f"normalized ({p.normalize.scope}) -> {OUT}")
