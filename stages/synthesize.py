"""synthesize: write the embedded synthetic SEED-V to data/raw/synthetic (params: synthetic.*)."""

import shutil
from pathlib import Path

from pipeline.synthetic import write_dataset
from stages.common import params

OUT = Path("data/raw/synthetic")

if __name__ == "__main__":
    p = params()
    tmp = OUT.with_name(f".{OUT.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_dataset(tmp, seed=p.synthetic.seed, n_subjects=p.synthetic.subjects)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    print(f"wrote {p.synthetic.subjects} synthetic subjects to {OUT}")
