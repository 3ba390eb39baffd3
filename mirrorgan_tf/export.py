"""python -m mirrorgan_tf.export --run-dir R [--export-dir saved_models/mirrorgan] [--version N] [--checkpoint best]

Writes the run's EMA generator (its latest gan checkpoint, or with --checkpoint best the best one the
run kept while training) as a SavedModel for TensorFlow Serving (default version: the next
integer). See mirrorgan_tf/serving/export.py for the signatures.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--export-dir", default="saved_models/mirrorgan")
    p.add_argument("--version", type=int)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="the run's latest gan checkpoint, or the best one it kept while training (train.best_metric)")
    a = p.parse_args(argv)
    from mirrorgan_tf.errors import run_cli
    from mirrorgan_tf.serving.export import export

    def body() -> int:
        print(export(a.run_dir, a.export_dir, a.version, a.checkpoint))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
