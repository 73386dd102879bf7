"""ingest: read and validate the data.dataset files under data.raw_dir -> one feature table.

    python -m stages.ingest OUT_PARQUET
"""

import pandas as pd
from tqdm import tqdm

from pipeline import datasets
from pipeline.features import recording_to_frame, write_table
from stages.common import params, paths, user_errors

if __name__ == "__main__":
    args = paths(__doc__, "out")
    p = params()
    frames = []
    with user_errors():
        dataset = datasets.load(p.data.dataset)
        recordings = dataset.read_dataset(p.data.raw_dir, p.data.subjects, nan_policy=p.data.nan_policy)
        for recording in tqdm(recordings, desc="ingest", unit="subject", total=len(p.data.subjects), disable=None):
            frames.append(recording_to_frame(recording, dataset.SPEC))
    table = pd.concat(frames, ignore_index=True)
    write_table(table, args.out, dataset.SPEC)
    print(f"wrote {len(table)} windows of {len(frames)} {dataset.SPEC.name} subjects to {args.out}")
