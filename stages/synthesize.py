"""synthesize: write the embedded synthetic SEED-V (params: synthetic.*).

    python -m stages.synthesize OUT_DIR
"""

import argparse
from pathlib import Path

from pipeline.files import atomic_path
from pipeline.synthetic import write_dataset
from stages.common import params

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    p = params()
    with atomic_path(args.out) as tmp:
        write_dataset(tmp, seed=p.synthetic.seed, n_subjects=p.synthetic.subjects)
    print(f"wrote {p.synthetic.subjects} synthetic subjects to {args.out}")
