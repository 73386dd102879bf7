"""pipeline.ablation: the reference minus each run, paired over subjects, Holm over the table."""

import json
import subprocess

import numpy as np
import pytest

from pipeline import ablation
from tests.conftest import ROOT


def folds(accuracy_by_subject, seeds=("0", "1", "2"), shift=0.0):
    """Fold metrics of a several-seed run, each seed's accuracy shifted by ``shift`` x seed."""
    def metrics(a, k):
        return {level: {"accuracy": a + shift * int(k), "f1_macro": a, "n": 45} for level in ("trial", "window")}
    return {s: {**metrics(a, "0"), "seeds": {k: metrics(a, k) for k in seeds}} for s, a in accuracy_by_subject.items()}


def test_a_component_that_helps_every_subject_is_found_and_one_that_does_nothing_is_not():
    rng = np.random.default_rng(0)
    base = {s: float(a) for s, a in enumerate(rng.uniform(0.5, 0.9, 16), 1)}
    worse = {s: a - 0.05 - 0.01 * (s % 3) for s, a in base.items()}
    table = ablation.ablation({"main": folds(base), "off": folds(worse), "same": folds(base)})
    off, same = table["off"]["difference"]["trial"], table["same"]["difference"]["trial"]
    assert off["mean_difference"] == pytest.approx(0.06, abs=0.01) and off["wins"] == 16
    assert off["p_permutation"] == pytest.approx(2 / 2**16) and off["p_holm"] == pytest.approx(4 * 2 / 2**16)
    assert off["per_seed"] == pytest.approx({"0": off["mean_difference"]} | {"1": off["mean_difference"],
                                                                             "2": off["mean_difference"]})
    assert same["mean_difference"] == 0 and same["p_permutation"] == 1 and same["ties"] == 16
    assert table["main"]["accuracy"]["trial"]["mean"] == pytest.approx(np.mean(list(base.values())))
    assert "| off | " in ablation.markdown(table) and "+6." in ablation.markdown(table)


def test_revisions_are_read_from_git(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)   # noqa: E731
    run("git", "init", "-q")
    (tmp_path / "metrics/folds").mkdir(parents=True)
    for tag, shift in (("main", 0.0), ("off", -0.1)):
        for s in (1, 2, 3):
            seeds = {str(k): {level: {"accuracy": 0.7 + 0.05 * s + shift, "f1_macro": 0.7, "n": 45}
                              for level in ("trial", "window")}
                     for k in range(2)}
            (tmp_path / f"metrics/folds/subject-{s}.json").write_text(json.dumps({"seeds": seeds}))
        (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        run("git", "add", "-A")
        run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", tag)
        run("git", "tag", tag)
    monkeypatch.setattr("dvc.api.exp_show", lambda: [])
    assert ablation.main(["main", "off"]) == 0
    assert "| off | 70.0 ± 0.0 | 70.0 ± 0.0 | +10.0 |" in capsys.readouterr().out
    assert ablation.main(["main", "nowhere"]) == 1
    assert "nowhere: no metrics/folds in that revision" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("split: loso", "split: cross-session"))
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "other split")
    assert ablation.main(["main", "HEAD"]) == 1    # pairing across splits means nothing: refused
    assert "HEAD: seed-v / cross-session, but main is seed-v / loso" in capsys.readouterr().err
