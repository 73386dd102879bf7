"""Time the training step two ways, in one run on one machine: a straightforward reference loop, and the
project's path (``pipeline.models.transformer.train_step`` on batches gathered on the device).

    python benchmarks/step.py                            # the default config and the original's size
    python benchmarks/step.py --steps 5 --original-steps 1 --subjects 2 --repeats 1   # a quick look

(a) reference, written the way most EEG code is: a ``torch.utils.data.DataLoader`` over (trial, crop)
    items whose collate function pads each batch to its longest member, fp32, eager, ``.item()`` every
    step for the running loss and accuracy;
(b) the project: trial arrays resident on the device, each batch gathered there by index
    (:class:`pipeline.sequences.Batcher`), losses summed on the device and read once per epoch, bf16
    autocast on CUDA.

Both use the same model code, the same initial weights (same seed), the same batches in the same order
(drawn as ``pipeline.models.transformer.fit`` draws them) and the same number of optimizer steps. Each (config, path)
runs in its own fresh process, so peak memory is its own (CPU: peak RSS; CUDA: peak allocated), ``--repeats``
times, alternating (a) and (b): on a shared machine one pair of runs can differ by ±30 % from the next.
Prints the median steps/s, windows/s and step time (with min-max), peak memory, the ratio of the medians
(b)/(a) with the range of the pairs' ratios, and whether the first-batch losses agree; on CUDA also
the model FLOP per step (``torch.utils.flop_counter``) and MFU against the device's peak (``--peak-tflops``,
or looked up for known GPUs). Data: random features in SEED-V's shapes and trial lengths (timing does not
depend on their values). Run on demand; no test asserts on its timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the project's `pipeline` package, not benchmarks/pipeline.py
ORIGINAL = dict(d_model=512, heads=8, layers=4, d_ff=2048)   # the paper's size (≈28 M parameters)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}  # bf16 dense


def batches(trials, params, n_steps: int, seed: int = 0):
    """The first ``n_steps`` (positions, owners) batches of training, drawn as the transformer's fit draws them."""
    import numpy as np

    from pipeline.models.transformer import epoch_batches, steps_per_epoch

    rng, per_epoch, out = np.random.default_rng(seed), steps_per_epoch(len(trials.lengths), params), []
    while len(out) < n_steps:
        positions, owners, epoch = epoch_batches(trials.lengths, params, rng, per_epoch)
        out += [(positions[b], owners[b]) for b in epoch]
    return out[:n_steps]


def random_trials(n_subjects: int):
    import numpy as np

    from pipeline.datasets.seedv import N_CLASSES, N_EEG, N_EYE, SPEC, TRIAL_WINDOWS
    from pipeline.sequences import Trials

    rng = np.random.default_rng(0)
    lengths = np.tile(np.asarray(TRIAL_WINDOWS), n_subjects)
    t, longest = len(lengths), int(lengths.max())
    valid = np.arange(longest) < lengths[:, None]
    eeg = (rng.standard_normal((t, longest, N_EEG), dtype=np.float32) * valid[..., None]).astype(np.float32)
    eye = (rng.standard_normal((t, longest, N_EYE), dtype=np.float32) * valid[..., None]).astype(np.float32)
    subjects = np.repeat(np.arange(1, n_subjects + 1), len(TRIAL_WINDOWS))
    per_subject = np.arange(len(TRIAL_WINDOWS))
    sessions = np.tile(per_subject // SPEC.trials_per_session + 1, n_subjects)   # 1.., as in a feature table
    return Trials(eeg, eye, lengths, rng.integers(0, N_CLASSES, t), subjects, sessions,
                  np.tile(per_subject % SPEC.trials_per_session, n_subjects), SPEC)


def run_path(path: str, model_overrides: dict, n_subjects: int, steps: int, warmup: int, threads: int,
             device_name: str) -> dict:
    """One path on one config in this (fresh) process: first-batch loss, timed steps, peak memory."""
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from pipeline.datasets.seedv import SPEC
    from pipeline.models import resolve_device
    from pipeline.models.transformer import CrossModalTransformer, candidates, grl_alpha, train_step
    from pipeline.params import load
    from pipeline.sequences import Batcher, to_device

    torch.set_num_threads(threads)
    params = load(ROOT / "params.yaml")
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, **model_overrides))
    device = resolve_device(device_name)
    tp, crop = params.train, params.cv.crop_windows
    candidate = candidates(params)[-1]   # the last candidate setting (by default the regularized one: noise draws)
    trials = random_trials(n_subjects)
    stream = batches(trials, params, warmup + steps)
    labels_all = torch.from_numpy(trials.labels)
    domains_all = torch.from_numpy(trials.subjects - 1)

    torch.manual_seed(0)
    model = CrossModalTransformer(params.model, SPEC.widths, SPEC.n_classes, n_subjects).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=warmup + steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if path == "project":
        batch_of = Batcher(trials, np.arange(len(trials.lengths)), device)
        labels, domains = labels_all.to(device), domains_all.to(device)
        staged = [(to_device(positions, device), to_device(owners, device)) for positions, owners in stream]
        alphas = to_device(np.array([grl_alpha(k / (warmup + steps)) for k in range(warmup + steps)], np.float32), device)

        def run(first: int, last: int):   # as pipeline.models.transformer.fit: staged sequences, no host sync
            sums = torch.zeros(4, dtype=torch.float64, device=device)
            losses = []
            for k in range(first, last):
                positions, owners = staged[k]
                out = train_step(model, optimizer, batch_of(positions, owners), labels[owners], domains[owners],
                                 alphas[k], tp, candidate)
                scheduler.step()
                sums += out
                losses.append(out[0])
            return sums.tolist(), losses[0].item() / len(stream[first][1]) if losses else None
    else:
        class Crops(Dataset):
            """(trial, window positions) items -> (eeg (L, N_EEG), eye (L, N_EYE), label, domain)."""

            def __init__(self, items):
                self.items = items

            def __len__(self):
                return len(self.items)

            def __getitem__(self, k):
                trial, positions = self.items[k]
                return (torch.from_numpy(trials.eeg[trial, positions]), torch.from_numpy(trials.eye[trial, positions]),
                        int(trials.labels[trial]), int(trials.subjects[trial] - 1))

        def pad_collate(items):
            lengths = torch.tensor([len(item[0]) for item in items])
            eeg = nn.utils.rnn.pad_sequence([item[0] for item in items], batch_first=True)
            eye = nn.utils.rnn.pad_sequence([item[1] for item in items], batch_first=True)
            valid = torch.arange(eeg.shape[1])[None, :] < lengths[:, None]
            return eeg, eye, valid, torch.tensor([i[2] for i in items]), torch.tensor([i[3] for i in items])

        items, index_batches = [], []
        for positions, owners in stream:
            index_batches.append(list(range(len(items), len(items) + len(owners))))
            items += [(int(o), p[p >= 0]) for p, o in zip(positions, owners)]
        # its own generator: creating the iterator must not draw from the global RNG (the dropout masks)
        loader = DataLoader(Crops(items), batch_sampler=index_batches, collate_fn=pad_collate,
                            generator=torch.Generator().manual_seed(0))
        loaded = iter(loader)

        def run(first: int, last: int):
            total_loss, correct, first_loss = 0.0, 0, None
            for k in range(first, last):
                eeg, eye, valid, y, d = (t.to(device) for t in next(loaded))
                if candidate.input_noise:   # the same regularized objective as the project's step
                    noise = candidate.input_noise
                    eeg, eye = eeg + noise * torch.randn_like(eeg), eye + noise * torch.randn_like(eye)
                out = model(eeg, eye, valid, grl_alpha=grl_alpha(k / (warmup + steps)))
                class_loss = nn.functional.cross_entropy(out.logits, y, label_smoothing=candidate.label_smoothing)
                loss = class_loss + tp.domain_weight * nn.functional.cross_entropy(out.domain_logits, d)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(y)
                correct += (out.logits.argmax(-1) == y).sum().item()
                first_loss = loss.item() if first_loss is None else first_loss
            return [total_loss, correct], first_loss

    _, first_loss = run(0, warmup)              # includes the first batch: same init, same data
    sync()
    start = time.perf_counter()
    run(warmup, warmup + steps)
    sync()
    seconds = (time.perf_counter() - start) / steps
    result = {"step_s": seconds, "windows_per_step": tp.batch_size * crop, "first_loss": first_loss,
              "parameters": sum(p.numel() for p in model.parameters()),
              "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {threads} thread(s)"}
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        positions, owners = stream[0]
        batch = Batcher(trials, np.arange(len(trials.lengths)), device)(to_device(positions, device),
                                                                          to_device(owners, device))
        with FlopCounterMode(display=False) as counter:
            out = model(*batch, grl_alpha=0.5)
            nn.functional.cross_entropy(out.logits.float(), labels_all[owners].to(device)).backward()
        result["flop_per_step"] = counter.get_total_flops()
    return result


def measure(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_path, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps, default config")
    parser.add_argument("--original-steps", type=int, default=3, help="timed steps at the original's size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per path, run alternately")
    parser.add_argument("--subjects", type=int, default=15, help="training subjects (a LOSO fold has 15)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the pipeline: compute.threads_per_fold)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: looked up)")
    args = parser.parse_args()

    ok = True
    for name, overrides, steps in (("default", {}, args.steps), ("original size", ORIGINAL, args.original_steps)):
        runs = {"reference": [], "project": []}
        for _ in range(args.repeats):    # alternating: a neighbour's load on a shared machine hits both paths
            for path, done in runs.items():
                done.append(measure(path, overrides, args.subjects, steps, args.warmup, args.threads, args.device))
        a, b = (runs[path][0] for path in runs)
        print(f"\n{name}: {a['parameters'] / 1e6:.2f} M parameters, batch {a['windows_per_step']} windows, "
              f"{steps} timed steps, {a['device']}, {args.repeats} run(s) per path (median, min-max)")
        medians = {}
        for path, done in runs.items():
            step_s = sorted(r["step_s"] for r in done)
            medians[path] = median = statistics.median(step_s)
            line = (f"  {path:9s}  {1 / median:8.2f} steps/s  {a['windows_per_step'] / median:10.0f} windows/s  "
                    f"{1000 * median:8.1f} ms/step ({1000 * step_s[0]:.1f}-{1000 * step_s[-1]:.1f})  "
                    f"peak {max(r['peak_mb'] for r in done):8.0f} MiB")
            if "flop_per_step" in done[0]:
                peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in done[0]["device"]), None)
                achieved = done[0]["flop_per_step"] / median
                line += f"  {achieved / 1e12:.2f} TFLOP/s" + (f"  MFU {achieved / (peak * 1e12):.1%}" if peak else "")
            print(line)
        # fp32 on CPU: the same bits; bf16 autocast on CUDA (project only): close, not equal
        tolerance = 0.0 if b["device"].startswith("cpu") else 1e-2
        agree = all(abs(ra["first_loss"] - rb["first_loss"]) <= tolerance
                    for ra, rb in zip(runs["reference"], runs["project"]))
        ok &= agree
        pairs = sorted(ra["step_s"] / rb["step_s"] for ra, rb in zip(runs["reference"], runs["project"]))
        print(f"  (b)/(a) = {medians['reference'] / medians['project']:.2f}x (pairs {pairs[0]:.2f}-{pairs[-1]:.2f}x)"
              f"   first-batch loss: reference {a['first_loss']:.6f}, project {b['first_loss']:.6f} "
              f"({'agree' if agree else 'DIFFERENT'}, tolerance {tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
