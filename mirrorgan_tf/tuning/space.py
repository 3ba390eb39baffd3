"""The config's `tune.space` as Keras Tuner hyperparameters, and a trial's values back as a config.

Hyperparameter names are the config keys they set (`train.g_learning_rate`), so a trial's values,
the results table and TensorBoard's HParams view all speak the config's language.
"""

from __future__ import annotations

import keras_tuner

from mirrorgan_tf.config import Config, search_space, with_values

# What Hyperband adds to a trial's values (Keras Tuner's names): the cumulative resource the trial
# trains to, where it starts, and the trial it continues.
HYPERBAND_EPOCHS = "tuner/epochs"
HYPERBAND_INITIAL_EPOCH = "tuner/initial_epoch"
HYPERBAND_PARENT = "tuner/trial_id"


def hyperparameters(cfg: Config) -> keras_tuner.HyperParameters:
    """keras_tuner.HyperParameters holding every key of `cfg.tune.space` (checked by
    config.search_space; raises ConfigError naming the key). float -> hp.Float (sampling "log" when
    `log`), int -> hp.Int, choice -> hp.Choice, bool -> hp.Boolean. The default value of each is
    the config's own value where the range holds it, so Keras Tuner's first Bayesian points and a
    default-valued trial mean the config as written."""
    hp = keras_tuner.HyperParameters()
    for name, p in search_space(cfg).items():
        section, key = name.split(".")
        current = getattr(getattr(cfg, section), key)
        sampling = "log" if p.log else "linear"
        if p.kind == "float":
            default = current if p.min <= current <= p.max else None
            hp.Float(name, p.min, p.max, step=p.step, sampling=sampling, default=default)
        elif p.kind == "int":
            lo, hi = int(p.min), int(p.max)
            default = int(current) if lo <= current <= hi else None
            hp.Int(name, lo, hi, step=int(p.step) if p.step else None, sampling=sampling, default=default)
        elif p.kind == "choice" and all(isinstance(v, bool) for v in p.values):
            # Keras Tuner's Choice stores booleans as 0 and 1; Boolean keeps them booleans.
            if len(p.values) == 2:
                hp.Boolean(name, default=bool(current))
            else:
                hp.Fixed(name, p.values[0])
        elif p.kind == "choice":
            hp.Choice(name, p.values, default=current if current in p.values else None)
        else:
            hp.Boolean(name, default=bool(current))
    return hp


def searched_values(cfg: Config, values: dict) -> dict:
    """The values of a trial that set config keys ({"train.g_learning_rate": 3e-4, ...}), without
    Keras Tuner's own bookkeeping (Hyperband's tuner/*)."""
    names = search_space(cfg)
    out = {}
    for k, v in values.items():
        if k in names:
            section, key = k.split(".")
            # Values that come back through Keras Tuner's protos (distributed mode) or its Choice
            # may be 0/1 for a bool key: give the key its own type.
            if names[k].kind in ("bool", "choice") and type(v) is int and v in (0, 1) and \
                    isinstance(getattr(getattr(cfg, section), key), bool):
                v = bool(v)
            out[k] = v
    return out


def trial_config(cfg: Config, values: dict, *, steps: int, seed: int, pretrained: dict[str, str],
                 source: str) -> Config:
    """The config one training of a trial runs: `cfg` with the trial's `values`, the GAN stage's
    step budget (`train.max_steps`), its seed (`train.seed`), and the shared pretrained modules
    ({"damsm": path, "stream": path} -> damsm.checkpoint, stream.checkpoint). A trial does not
    evaluate while it trains (train.eval_every 0, no best checkpoint): the objective scores it at
    its end, and evaluations on the way would only cost its time. Raises ConfigError naming
    `source` when the combination breaks a cross-field rule."""
    fixed = {"train.max_steps": int(steps), "train.seed": int(seed), "train.eval_every": 0, "train.best_metric": "",
             **{f"{stage}.checkpoint": path for stage, path in pretrained.items()}}
    return with_values(cfg, {**searched_values(cfg, values), **fixed}, source)
