"""python -m mirrorgan_tf.summary [--config FILE] [--set key=value ...] [--json]

Builds every network of a configuration and prints its parameter counts: trainable, and
non-trainable (frozen backbones, BatchNorm moving statistics). `--json` prints one JSON object
{network: {"trainable": n, "non_trainable": n}}. The vocabulary size comes from `data.vocab_size`
or, when that is 0, from the prepared dataset's manifest.
"""

from __future__ import annotations

import argparse
import json
import sys


def summarize(cfg) -> dict:
    from mirrorgan_tf import data
    from mirrorgan_tf.models.layers import count_params
    from mirrorgan_tf.models.networks import build_networks

    vocab = cfg.data.vocab_size or data.vocab_size(cfg)
    nets = build_networks(cfg, vocab)
    return {name: {"trainable": count_params(m.trainable_weights),
                   "non_trainable": count_params(m.non_trainable_weights)}
            for name, m in nets.named().items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.errors import run_cli

    def body() -> int:
        counts = summarize(load_config(a.config, a.overrides))
        if a.json:
            print(json.dumps(counts))
            return 0
        width = max(len(n) for n in counts)
        print(f"{'network':<{width}}  {'trainable':>13}  {'non-trainable':>13}")
        for name, c in counts.items():
            print(f"{name:<{width}}  {c['trainable']:>13,}  {c['non_trainable']:>13,}")
        total = {k: sum(c[k] for c in counts.values()) for k in ("trainable", "non_trainable")}
        print(f"{'total':<{width}}  {total['trainable']:>13,}  {total['non_trainable']:>13,}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
