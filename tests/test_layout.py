"""Imports run downward: read every source file's imports (with `ast`, nothing is imported) and
check the house rules.

- `mirrorgan_tf/models/` imports nothing above it: not training/, serving/, metrics/,
  evaluation/, runs.py, losses.py, nor a command-line module.
- Only the training-side CLIs (train.py, tune.py, benchmark.py), training/ itself and the
  scripts of benchmarks/ (top-level measurements that nothing imports) import `mirrorgan_tf.training`.
- `pipelines/` imports neither `mirrorgan_tf.models` nor `mirrorgan_tf.training`.
"""

import ast

from tests.conftest import REPO

PACKAGE = "mirrorgan_tf"
CLIS = ("train", "tune", "benchmark", "sample", "evaluate", "export", "serve", "client", "summary", "demo")
ABOVE_MODELS = ("training", "serving", "metrics", "evaluation", "runs", "losses") + CLIS
TRAINING_CLIS = ("train.py", "tune.py", "benchmark.py")
SOURCE_DIRS = ("mirrorgan_tf", "pipelines", "benchmarks")


def imported_modules(source: str) -> set:
    """Every module a file names in an import, anywhere in it (function bodies too), as dotted
    names: `from a.b import c` gives a.b and a.b.c (c may be a module)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(path: str, source: str) -> list:
    """The rules `path` (relative to the repository, with '/') breaks, one line each."""
    parts = path.split("/")
    found = []
    for module in sorted(imported_modules(source)):
        if parts[:2] == [PACKAGE, "models"]:
            for name in ABOVE_MODELS:
                if _under(module, f"{PACKAGE}.{name}"):
                    found.append(f"{path}: models/ imports {module}")
        if _under(module, f"{PACKAGE}.training") and parts[:2] != [PACKAGE, "training"] \
                and parts[-1] not in TRAINING_CLIS and parts[0] != "benchmarks":
            found.append(f"{path}: only the training CLIs import training/, not {module}")
        if parts[0] == "pipelines":
            for name in ("models", "training"):
                if _under(module, f"{PACKAGE}.{name}"):
                    found.append(f"{path}: pipelines/ imports {module}")
    return found


def test_the_checker_catches_each_rule():
    assert sorted(violations("mirrorgan_tf/models/glam.py", "from mirrorgan_tf.training import loop\n")) == [
        "mirrorgan_tf/models/glam.py: models/ imports mirrorgan_tf.training",
        "mirrorgan_tf/models/glam.py: models/ imports mirrorgan_tf.training.loop",
        "mirrorgan_tf/models/glam.py: only the training CLIs import training/, not mirrorgan_tf.training",
        "mirrorgan_tf/models/glam.py: only the training CLIs import training/, not mirrorgan_tf.training.loop"]
    assert violations("mirrorgan_tf/models/stem.py", "def f():\n    import mirrorgan_tf.runs\n") == [
        "mirrorgan_tf/models/stem.py: models/ imports mirrorgan_tf.runs"]
    assert violations("mirrorgan_tf/models/stem.py", "from mirrorgan_tf import serving\n") == [
        "mirrorgan_tf/models/stem.py: models/ imports mirrorgan_tf.serving"]
    assert violations("mirrorgan_tf/sample.py", "from mirrorgan_tf.training.loop import Progress\n") == [
        "mirrorgan_tf/sample.py: only the training CLIs import training/, not mirrorgan_tf.training.loop",
        "mirrorgan_tf/sample.py: only the training CLIs import training/, not mirrorgan_tf.training.loop.Progress"]
    assert violations("pipelines/shapes.py", "from mirrorgan_tf.models import glam\n") == [
        "pipelines/shapes.py: pipelines/ imports mirrorgan_tf.models",
        "pipelines/shapes.py: pipelines/ imports mirrorgan_tf.models.glam"]
    # What the rules allow.
    assert violations("mirrorgan_tf/train.py", "from mirrorgan_tf.training import gan\n") == []
    assert violations("mirrorgan_tf/training/gan.py", "from mirrorgan_tf.training import loop, steps\n") == []
    assert violations("mirrorgan_tf/models/glam.py", "from mirrorgan_tf.models.layers import conv\n") == []
    assert violations("mirrorgan_tf/models_extra.py", "from mirrorgan_tf.runs import RunDir\n") == []
    assert violations("pipelines/prepare.py", "from mirrorgan_tf import text, records\n") == []


def test_imports_run_downward():
    files = sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))
    assert len(files) > 40 and any(p.parts[-2:] == ("models", "glam.py") for p in files)
    found = [v for p in files for v in violations(p.relative_to(REPO).as_posix(), p.read_text(encoding="utf-8"))]
    assert found == []
