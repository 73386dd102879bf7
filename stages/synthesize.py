"""synthesize: write the embedded synthetic dataset in data.dataset's layout (params: synthetic.*, data.dataset).

    python -m stages.synthesize OUT_DIR
"""

from pipeline import datasets
from pipeline.files import atomic_path
from pipeline.synthetic import write_dataset
from stages.common import params, paths

if __name__ == "__main__":
    args = paths(__doc__, "out")
    p = params()
    with atomic_path(args.out) as tmp:
        write_dataset(tmp, seed=p.synthetic.seed, n_subjects=p.synthetic.subjects, drift=p.synthetic.drift,
                      dataset=datasets.load(p.data.dataset))
    print(f"wrote {p.synthetic.subjects} synthetic {p.data.dataset} subjects to {args.out}")
