"""Peak memory of `python -m mirrorgan_tf.sample` against the number of samples.

    python benchmarks/sample_memory.py --run-dir R [--num 8 256] [--batch-size 8] [--columns 16]
        [--caption "a small red circle on the left"] [--json]

Runs the command once per --num, each in its own process writing into a temporary folder, and
prints per run its peak resident memory (ru_maxrss of that process alone, from os.wait4, in MiB),
wall seconds, and the pictures written (count, widest in pixels, largest file in bytes). With
--json it prints one object: {"runs": [{"num", "peak_rss_mib", "seconds", "files",
"widest_px", "largest_bytes"}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png_width(path: str) -> int:
    """The width in pixels of a PNG file, read from its IHDR header (bytes 16-20, big-endian)."""
    with open(path, "rb") as f:
        return struct.unpack(">I", f.read(24)[16:20])[0]


def measure(run_dir: str, num: int, caption: str, extra: list[str]) -> dict:
    """One `python -m mirrorgan_tf.sample` process: its peak RSS (MiB), seconds and output files.
    Raises RuntimeError with the command's stderr when it fails."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile("w+") as err:
        cmd = [sys.executable, "-m", "mirrorgan_tf.sample", "--run-dir", run_dir, "--caption", caption,
               "--num", str(num), "--out", out, *extra]
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the largest of every child so far.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.time() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err.read()[-3000:]}")
        files = [os.path.join(out, f) for f in sorted(os.listdir(out))]
        return {"num": num, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(seconds, 1),
                "files": len(files), "widest_px": max(png_width(f) for f in files),
                "largest_bytes": max(os.path.getsize(f) for f in files)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--num", type=int, nargs="+", default=[8, 256])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--columns", type=int)
    p.add_argument("--caption", default="a small red circle on the left")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    extra = [x for flag, v in (("--batch-size", a.batch_size), ("--columns", a.columns)) if v is not None
             for x in (flag, str(v))]
    runs = [measure(a.run_dir, n, a.caption, extra) for n in a.num]
    if a.json:
        print(json.dumps({"runs": runs}))
    else:
        for r in runs:
            print(f"--num {r['num']:>6}: peak RSS {r['peak_rss_mib']:8.1f} MiB, {r['seconds']:6.1f} s, "
                  f"{r['files']} files, widest {r['widest_px']} px, largest {r['largest_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
