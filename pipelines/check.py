"""python -m pipelines.check DIR

Reads a prepared dataset whole and checks every shard against its manifest: the byte size and
sha256 recorded at preparation or, for a dataset prepared before they were kept, every record's
CRCs and each split's record count. Exits 0 when every shard is intact; otherwise prints
`error: ...` naming each damaged shard and the fix, and exits 2. Takes about as long as reading
the dataset once; `train`, `evaluate` and `tune` compare only the sizes on every start.
"""

from __future__ import annotations

import argparse
import sys
import time

from mirrorgan_tf.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a folder written by python -m pipelines.prepare (local path or gs://...)")
    a = p.parse_args(argv)

    def body() -> int:
        from mirrorgan_tf import data

        start = time.time()
        problems, notes = data.verify_shards(a.dir, progress=lambda name, outcome: print(f"  {name}: {outcome}",
                                                                                         flush=True))
        for note in notes:
            print(f"note: {note}")
        if problems:
            raise data.DataError(f"{a.dir}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        print(f"{a.dir}: every shard intact; {time.time() - start:.1f} s")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
