"""What the evaluation during training (train.eval_every, training/quality.py) costs per evaluation
on a config, against the GAN stage's own step time: the seconds of one evaluation of the config's
train.eval_metrics on train.eval_captions x train.eval_samples_per_caption images, and of one GAN
step, on this machine, with untrained networks (the work of a step or an evaluation does not depend
on the weights).

    python benchmarks/eval_during_training.py --config configs/shapes.yaml --data-dir /tmp/shapes \
        [--evaluations 3] [--steps 30]

The data directory must hold a prepared dataset of the config's kind (shapes: `python -m
pipelines.prepare --dataset shapes --out DIR`; the number of training images does not change the
cost of an evaluation, only that of the attribute classifier's one-off training). Prints one JSON
line: seconds per evaluation (the first, which traces the generator, and the later ones), seconds
per GAN step, and the share of the GAN stage (train.max_steps steps) that the evaluations every
train.eval_every steps would take.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--evaluations", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="GAN steps timed (after 3 untimed ones that trace)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)

    import tensorflow as tf

    from mirrorgan_tf import data, distribute, runs
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.training import gan
    from mirrorgan_tf.training.quality import QualityDuringTraining

    cfg = load_config(a.config, [f"data.dir={a.data_dir}", *a.overrides])
    t = cfg.train
    run = runs.RunDir(tempfile.mkdtemp(prefix="eval-cost-"))
    strategy = distribute.build_strategy("one_device")
    state = gan.GanTrainState(cfg, strategy, data.vocab_size(cfg))
    step = gan.make_train_step(cfg, strategy, state)
    batches = iter(data.DistributedInput(strategy, cfg, "train", batch_size=t.batch_size))
    for _ in range(3):
        step(next(batches))
    start = time.time()
    for _ in range(a.steps):
        losses = step(next(batches))
    float(losses["g"])  # wait for the last step
    step_seconds = (time.time() - start) / a.steps

    evaluator = QualityDuringTraining(cfg, run, state.nets.stem, state.glam_ema)
    writer = tf.summary.create_file_writer(run.logs("gan"))
    seconds = []
    for i in range(a.evaluations):
        start = time.time()
        evaluator((i + 1) * t.eval_every, writer, None)
        seconds.append(time.time() - start)
    later = sum(seconds[1:]) / max(1, len(seconds) - 1)
    evaluations = t.max_steps // t.eval_every + (1 if t.max_steps % t.eval_every else 0)
    stage = t.max_steps * step_seconds
    total = seconds[0] + later * (evaluations - 1)
    print(json.dumps({
        "config": a.config, "metrics": list(t.eval_metrics), "captions": evaluator.captions,
        "samples_per_caption": evaluator.k, "images": len(evaluator.ctx.rows),
        "setup_seconds": round(evaluator.setup_seconds, 2), "first_evaluation_seconds": round(seconds[0], 2),
        "later_evaluation_seconds": round(later, 2), "gan_step_seconds": round(step_seconds, 4),
        "gan_steps": t.max_steps, "eval_every": t.eval_every, "evaluations_per_stage": evaluations,
        "share_of_gan_stage": round(total / (stage + total), 4),
        "load_average": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
