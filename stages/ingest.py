"""ingest: read and validate SEED-V files under data.raw_dir -> data/interim/features.parquet."""

import pandas as pd
from tqdm import tqdm

from pipeline.features import recording_to_frame, write_table
from pipeline.seedv import read_subject
from stages.common import params, user_errors

OUT = "data/interim/features.parquet"

if __name__ == "__main__":
    p = params()
    frames = []
    with user_errors():
        for subject in tqdm(p.data.subjects, desc="ingest", unit="subject", disable=None):
            recording = read_subject(p.data.raw_dir, subject, nan_policy=p.data.nan_policy)
            frames.append(recording_to_frame(recording))
    table = pd.concat(frames, ignore_index=True)
    write_table(table, OUT)
    print(f"wrote {len(table)} windows of {len(frames)} subjects to {OUT}")
