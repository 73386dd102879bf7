"""dvc.yaml lists exactly the project code each stage runs: no stale output after a code change, and no
rerun for a file the stage never imports."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "stages")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None if it is not project code."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every module ``path`` imports anywhere (top level or inside functions)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)   # `from pipeline import x`
    return names


def code_closure(module: str) -> set[str]:
    """Project files (relative paths) that running ``python -m module`` imports, transitively; empty
    package ``__init__.py`` files are left out (they cannot change a result)."""
    seen, todo = set(), [module_file(module)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            todo.extend(module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1))
    return {str(p.relative_to(ROOT)) for p in seen if p.name != "__init__.py" or p.read_text().strip()}


def test_every_stage_lists_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = re.search(r"python -m ([\w.]+)", stage["cmd"]).group(1)
        listed = {d for d in stage["deps"] if isinstance(d, str) and d.endswith(".py")}
        imported = code_closure(module)
        assert listed == imported, (f"stage {name}: missing {sorted(imported - listed)}, "
                                    f"extra {sorted(listed - imported)}")


LOGGING_CODE = {"pipeline/tracking.py", "pipeline/mlflow_store.py", "pipeline/provenance.py", "pipeline/serving.py"}


def test_only_the_track_stage_runs_logging_code():
    """Code that only logs cannot change a result, so no result-making stage depends on it (or on
    mlflow): editing how runs are logged reruns `track` and nothing else."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = re.search(r"python -m ([\w.]+)", stage["cmd"]).group(1)
        closure = code_closure(module)
        if name == "track":
            assert LOGGING_CODE <= closure
            continue
        assert not closure & LOGGING_CODE, (name, sorted(closure & LOGGING_CODE))
        assert not any(m.split(".")[0] == "mlflow" for f in closure for m in imported_modules(ROOT / f)), name


def test_the_import_scan_sees_lazy_and_relative_imports(tmp_path):
    assert "pipeline/files.py" in code_closure("pipeline.datasets.seedv")   # lazy, relative (..files), in a function
    assert "pipeline/errors.py" in code_closure("stages.ingest")      # through stages.common


def test_dvc_metrics_show_and_plots_read_at_a_glance():
    """`dvc metrics show` (default options) fits a 120-column terminal: the one DVC metric is the headline
    (summary.json); everything else is an output. The Vega confusion matrix is normalized by the true
    class, as the PNG is (DVC's template divides within each y value)."""
    def dvc(*args):
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout

    shown = dvc("metrics", "show")
    assert max(len(line) for line in shown.splitlines()) <= 120, shown
    assert set(json.loads(dvc("metrics", "show", "--json"))[""]["data"]) == {"metrics/summary.json"}
    assert set(shown.split()[1:8]) == {"trial_acc", "trial_f1", "window_acc", "logreg", "length", "position", "chance"}
    (confusion,) = json.loads(dvc("plots", "show", "--json", "plots/confusion.csv"))["data"]["plots/confusion.csv"]
    spec = json.dumps(confusion["content"])
    assert '"groupby": ["actual"]}, {"calculate": "datum.xy_count / datum.sum_y"' in spec   # rows: true class
    assert "normalized by true class (rows sum to 1)" in confusion["content"]["title"]["text"]
    (curves,) = json.loads(dvc("plots", "show", "--json", "plots/curves.csv"))["data"]["plots/curves.csv"]
    color = curves["content"]["spec"]["encoding"]["color"]
    rows = curves["content"]["data"]["values"]
    folds = {row["fold"] for row in rows}
    assert color["scale"]["scheme"] == "category20" and len(folds) <= 20   # one colour per fold
    # A dot on each fold's line at the epoch its inner validation chose (metrics/folds/<fold>.json).
    (dots,) = [layer for layer in curves["content"]["spec"]["layer"] if layer["mark"]["type"] == "point"]
    assert dots["transform"] == [{"filter": "datum.chosen == 1"}]
    marked = {(row["fold"], row["curve"]): int(row["epoch"]) for row in rows if int(row["chosen"]) == 1}
    assert len(marked) == len({(row["fold"], row["curve"]) for row in rows})
    for (fold, _), epoch in marked.items():
        assert epoch == json.loads((ROOT / "metrics/folds" / f"{fold}.json").read_text())["selection"]["chosen_epoch"]
