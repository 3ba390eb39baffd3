"""The one config system: typed dataclasses, loaded from YAML files in `configs/` by OmegaConf.

The dataclasses below are the schema: a config file may only name keys that exist here, with
values of the declared type; anything else is a ConfigError that names the key and the file.
Types are checked strictly where a loose reading would hide a mistake: a bool key takes only
`true`/`false` (not 1 or "yes"), an int key only an integer, a str key only a string; a float key
takes any number, and `2e-4` (which YAML 1.1 reads as a string) as the number everyone means.

A file may start from another: `base: shapes.yaml` (a path relative to the file's own folder)
loads that file first, itself perhaps from a base of its own, and the file then lists only what
differs. A missing base file or a cycle of bases is a ConfigError naming the file. Any key can
then be overridden from the command line with `--set section.key=value` (the value is parsed as
YAML, so `8`, `2e-4`, `true` and `[1, 2]` work). The result is always the whole configuration:
`dump_config` writes every key, and that file loads again with `--config` (a run saves it as
its config.yaml).

The dataclass defaults are the published MirrorGAN configuration for CUB birds (see
docs/architecture.md); `configs/cub.yaml` states every value anyway, so a reader sees the whole
published configuration in one file, and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, get_args, get_origin

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mirrorgan_tf.errors import MirrorganError


class ConfigError(MirrorganError, ValueError):
    """A config file, base or override names an unknown key, gives a value of the wrong type, or
    breaks a cross-field rule; the message names the key and the file (or the --set)."""


@dataclass
class DataConfig:
    # Which reader `pipelines.prepare` uses, and what the run trains on.
    dataset: Literal["shapes", "cub", "coco", "captions"] = "cub"
    # Prepared TFRecord shards + vocab.txt + manifest.json (output of `pipelines.prepare`).
    dir: str = "data/cub"
    # Raw dataset for preparation; not needed for `shapes`, which is rendered.
    source: str = ""
    # Captions are padded or cut to this many words (reference: 18 for CUB training).
    words_num: int = 18
    # 0 = take it from the prepared dataset's manifest (the normal case).
    vocab_size: int = 0
    # The original's augmentation: resize by 76/64, random crop, horizontal flip.
    random_crop: bool = True
    random_flip: bool = True
    # Training pipelines shuffle through a buffer of this many records (data.input_position=iterator only).
    shuffle_buffer: int = 2048
    seed: int = 0
    # How the training input's position is kept in checkpoints (README, Training, "Resuming continues
    # the data"). "iterator": the tf.data iterator itself (its shuffle buffer of stored records and its
    # prefetched batches; 400 MB per COCO-shaped checkpoint); "index": the order of each epoch is a
    # seeded permutation of the whole split and a checkpoint holds five integers (the batches taken),
    # read back without reading the skipped records. Default index (cub.yaml, coco.yaml); shapes.yaml
    # keeps iterator. A checkpoint saved with the other mode (or before the switch: iterator) resumes
    # with the input from its start, and says so.
    input_position: Literal["iterator", "index"] = "index"


@dataclass
class ModelConfig:
    stages: int = 3  # generator branches; image sizes are base_size * 2**i
    base_size: int = 64
    gf_dim: int = 32  # GF_DIM (ngf)
    df_dim: int = 64  # DF_DIM (ndf)
    z_dim: int = 100
    condition_dim: int = 100  # conditioning augmentation output (c)
    r_num: int = 2  # residual blocks per next stage
    embedding_dim: int = 256  # text feature size D (2 x LSTM units)
    word_embedding_dim: int = 300
    text_dropout: float = 0.5
    # Global sentence attention. The paper's attention weighs image positions; the released
    # code's `nn.Softmax()` without `dim` on a 4-D tensor normalises over channels instead.
    # Default: the paper; "channels" reproduces the code.
    global_attention_softmax: Literal["positions", "channels"] = "positions"
    # What the global attention attends with: the conditioning-augmented sentence vector s_ca
    # (= c, condition_dim), as both the paper's equations and the released code have it, or the
    # raw sentence embedding s (embedding_dim), an alternative of ours (it changes the parameter count).
    global_attention_input: Literal["condition", "sentence"] = "condition"
    # The scale of STEM's word and sentence features where the generator and the discriminators
    # take them in: "none" as the original, "rms" each vector at unit root mean square (ours; see
    # models/stem.py normalize_text: without it a short run's condition is mostly noise).
    text_norm: Literal["none", "rms"] = "none"
    # Ours, for within-caption variety (README, One caption, many pictures). stage_noise: the
    # noise z also enters every generator stage after the first (tiled beside the word and
    # sentence contexts); the paper feeds it to the first stage only (false).
    stage_noise: bool = False
    # Minibatch standard deviation (Karras et al., ICLR 2018, "Progressive Growing of GANs", 3):
    # each discriminator appends one feature map, the standard deviation across groups of this
    # many images averaged over features and positions, so that it can see a batch that lacks
    # variety. 0 (the published discriminators): off.
    minibatch_std: int = 0
    # A pair head in each discriminator (ours, after Lin et al.'s PacGAN, NeurIPS 2018, made
    # conditional): it judges two images of one caption together, real pairs (two training images
    # of one class) against generated ones (one caption under two noises), so that D can see a
    # generator whose samples of a caption vary less, or more, than the data's. false: the
    # published discriminators, which judge one image at a time.
    pair_discriminator: bool = False


@dataclass
class DamsmConfig:
    # Image encoder backbone: frozen Inception-v3 for CUB/COCO, a small CNN for shapes.
    backbone: Literal["inception_v3", "cnn"] = "inception_v3"
    # "imagenet": the frozen ImageNet weights the published configuration uses (what that resolves
    # to: models/backbones.py); a path: a local weights file; "": random (counting parameters, tests).
    backbone_weights: str = "imagenet"
    image_size: int = 299
    cnn_width: int = 32  # channels of the first block of the small CNN backbone
    # Bilinear resizing to image_size with corners aligned, as PyTorch before 0.4 did (the released
    # AttnGAN DAMSM was trained so); false: half-pixel centres (PyTorch >= 0.4, TensorFlow).
    resize_align_corners: bool = False
    batch_size: int = 48
    epochs: int = 600
    learning_rate: float = 2e-3
    lr_decay: float = 0.98  # per epoch
    lr_min_factor: float = 0.1  # decay stops at learning_rate * lr_min_factor
    beta_1: float = 0.5
    beta_2: float = 0.999
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    rnn_grad_clip: float = 0.25
    max_steps: int = 0  # 0 = run all epochs
    checkpoint: str = ""  # a DAMSM checkpoint (run dir or checkpoint path) to reuse instead of training
    # Not in AttnGAN (false: its loss): true gives each image its own caption with one word swapped
    # by train.wrong_word_swaps as one more negative of both losses (NegCLIP's hard negatives;
    # models/damsm.py), so that STEM reads the swapped word instead of guessing it from the others.
    word_swap_negatives: bool = False


@dataclass
class StreamConfig:
    backbone: Literal["resnet152", "cnn"] = "resnet152"
    backbone_weights: str = "imagenet"  # as damsm.backbone_weights
    image_size: int = 224
    cnn_width: int = 32
    embedding_dim: int = 256
    hidden_dim: int = 512
    max_len: int = 20
    bn_momentum: float = 0.01  # PyTorch convention (weight of the new batch statistics)
    # The released code feeds generated images in [-1, 1] to a captioner trained on
    # ImageNet-normalised inputs; True normalises as the captioner expects.
    imagenet_normalize: bool = True
    # Bilinear resizing to image_size with corners aligned (PyTorch before 0.4), see damsm.
    resize_align_corners: bool = False
    # A "show and tell" recipe (the authors name it but ship no script).
    batch_size: int = 128
    epochs: int = 5
    learning_rate: float = 1e-3
    max_steps: int = 0  # 0 = run all epochs
    checkpoint: str = ""  # a STREAM checkpoint (run dir or checkpoint path) to reuse instead of training
    # Pretraining only (the generator's redescription term keeps the one-hot loss): 0 = the plain
    # cross-entropy of the recipe. Above 0 the captioner is trained towards 1 - eps on each word, so
    # its confidence stops growing inside the region the real images of a class cover, and a
    # generated image gains little by moving to the class's most typical size and place.
    label_smoothing: float = 0.0
    # Pretraining only, like label_smoothing (ours; 0 = off, the recipe): each real image is zoomed
    # by a factor drawn from [-random_zoom, +random_zoom] (keras.layers.RandomZoom, positive = out)
    # and shifted by up to random_translation of its width and height (keras.layers.RandomTranslation),
    # edges filled with the nearest pixel. A captioner that saw each class a little wider than the
    # data scores the data's whole size and place range alike, so the redescription term stops
    # pulling generated objects to the class's middle; kept well inside the gaps between the size
    # and position words, so the words it must read stay right.
    random_zoom: float = 0.0
    random_translation: float = 0.0


@dataclass
class TrainConfig:
    batch_size: int = 12  # global batch, split across replicas
    epochs: int = 650
    max_steps: int = 0  # 0 = run all epochs
    g_learning_rate: float = 2e-4
    d_learning_rate: float = 2e-4
    beta_1: float = 0.5
    beta_2: float = 0.999
    stream_weight: float = 10.0  # lambda
    # Where the redescription term stops pulling (ours): "none" (default, the published loss) asks
    # every generated image for the lowest captioning loss STREAM can give, which the one most
    # typical picture of a caption earns; "real" stops each generated image's pull at the loss
    # STREAM gives the real image that caption came from, max(0, CE(fake) - CE(real))
    # (losses.stream_loss): an image STREAM reads back as well as a real one is left alone;
    # "real_words" the same word by word, max(0, CE(fake word) - CE(real word)) averaged over the
    # caption, so that no word (the shape's, say) may read back worse than from the real image.
    stream_floor: Literal["none", "real", "real_words"] = "none"
    kl_weight: float = 1.0
    damsm_weight: float = 0.0  # AttnGAN's DAMSM term in the G loss; not in MirrorGAN's
    # Wrong pairs that differ in one word (text.WordSwap): each a group of classes separated by
    # spaces, synonyms joined by "/", e.g. "circle/disc square/block triangle". Non-empty: D's
    # wrong-pair term averages the reference's pairs (another image's caption) and these, a real
    # image with its caption's word of one class swapped for another class's (losses.
    # discriminator_loss). Empty (default): the published loss.
    wrong_word_swaps: List[str] = field(default_factory=list)
    # Mode seeking (Mao et al., CVPR 2019, "Mode Seeking GANs"): the generator draws each caption
    # twice, with two noises, and is penalised by weight x 1 / (d_image / d_latent + 1e-5), so that
    # it cannot ignore its noise (losses.mode_seeking_loss). The examples of a batch are paired
    # (2i, 2i + 1) and the generator draws both with example 2i's caption. 0 (default): the
    # published loss, every example drawn with its own caption.
    mode_seeking_weight: float = 0.0
    # Which noise mode seeking asks the generator to use (ours): "both" (default, as Mao et al.,
    # whose latent is all the noise there is): the two samples of a pair have their own z and
    # conditioning-augmentation epsilon, and the latent distance spans both; "z": the pair shares
    # the first one's epsilon and the distance is over z alone, so the term rewards variety drawn
    # from z and never amplifies the noise on the text condition c.
    mode_seeking_noise: Literal["both", "z"] = "both"
    # Which generated images the mode-seeking term reads (ours): "last" (default, as Mao et al., who
    # have one output) the final stage's; "all" adds one term per stage, each with the full weight,
    # so the first stage, where the object's size and place are decided, is asked for variety too
    # instead of leaving the final stage to earn all the pixel distance by repainting colours.
    mode_seeking_stages: Literal["last", "all"] = "last"
    # Which term raises each pair's d_image / d_latent (the pairing, noise and stages above are
    # common to both): "msgan" (default) Mao et al.'s 1 / (ratio + 1e-5) (losses.mode_seeking_loss),
    # whose push, 1 / ratio^2 per unit of ratio, is strongest on a collapsed generator and fades as
    # the samples move apart, so it over-varies early and lets variety sink when another term pulls;
    # "dsgan" Yang et al.'s (ICLR 2019) -min(ratio, tau) (losses.diversity_sensitive_loss): a
    # constant push up to the bound mode_seeking_tau and none past it.
    mode_seeking_form: Literal["msgan", "dsgan"] = "msgan"
    # dsgan's bound on the ratio (mean |image difference| in [-1, 1] units over mean |latent
    # difference|). 0.13: what pairs of real shapes test images of one class read (at 64 and 32 px,
    # against unit-normal latents, d_latent about 1.13): asks for the data's variety, not more.
    mode_seeking_tau: float = 0.13
    # Whether the pair distance both terms raise ignores a contrast gain (ours): false (default,
    # Mao et al.'s and Yang et al.'s) is the plain mean |x1 - x2|, which grows when every pixel of
    # both images is scaled away from mid-grey, a change the published discriminators cannot see;
    # true keeps its value and removes that direction from its gradient (losses.pair_distance_ratios).
    mode_seeking_gain_invariant: bool = False
    # How the discriminators' BatchNorm layers meet a step's images (ours): "separate" (default, as
    # the original) normalises the real and the generated images each over its own batch, and then
    # a discriminator cannot tell the generated images from the same images with all their pixels
    # scaled by one gain (a contrast stretch about mid-grey; losses.joint_logits says why), which
    # mode seeking, whose pixel distance grows with that gain, is free to push; "joint" passes real
    # and generated images through each discriminator as one batch, in its update and in G's term.
    d_batch_norm: Literal["separate", "joint"] = "separate"
    ema_decay: float = 0.999
    # Warm the EMA up as tf.train.ExponentialMovingAverage does with num_updates: decay
    # min(ema_decay, (1 + step) / (10 + step)). The original has none, and over 1,000 steps a
    # 0.999 average still holds 37 % of the untrained generator; long runs end the same either way.
    ema_warmup: bool = False
    # Standing statistics (training/standing_statistics.py): 0, the original, gives the EMA weights
    # the raw generator's running BatchNorm statistics; N > 0 recomputes them for the EMA weights
    # over N training captions before every checkpoint, sample grid and evaluation.
    ema_standing_statistics: int = 0
    checkpoint_every: int = 2000  # steps
    sample_every: int = 2000
    log_every: int = 100
    keep_checkpoints: int = 3
    # Quality while the GAN stage trains (training/quality.py, README "Quality while a run trains"):
    # every eval_every steps (0 = never; off for the published configs, whose runs are long and
    # whose metrics need files the user supplies), the metrics eval_metrics (names of the evaluate
    # command's registry) on the first eval_captions test captions, each drawn
    # eval_samples_per_caption times with noise seeded by train.seed, logged to TensorBoard (eval/...)
    # and gan/metrics.json. An evaluation step is also a checkpoint step.
    eval_every: int = 0
    eval_metrics: List[str] = field(default_factory=lambda: ["r_precision"])
    eval_captions: int = 1000
    eval_samples_per_caption: int = 1
    # fid / kid: the 2015 Inception graph (a path ending in .pb, the published features) or a
    # keras.applications.InceptionV3 weights file, as evaluate's --inception-graph / --inception-weights.
    eval_inception: str = ""
    # Keep the checkpoint of the best evaluation so far in gan/best/ (never rotated by
    # keep_checkpoints): a figure's name as TensorBoard shows it under eval/ without the prefix, e.g.
    # "attributes/seen" (all four right, seen pairs), "kid", "r_precision"; "" = keep none.
    best_metric: str = ""
    # Which way is better: auto = min for fid and kid, max for every other metric.
    best_direction: Literal["auto", "max", "min"] = "auto"
    # Synchronise BatchNorm statistics across replicas (only matters with several replicas): the
    # same statistics as one device on the global batch.
    sync_batch_norm: bool = True
    # Mixed precision: false (float32), true or "float16" (mixed_float16, with loss scaling), or
    # "bfloat16" (mixed_bfloat16: float32's range, so no loss scaling is needed; oneDNN runs it
    # on CPUs with AVX512-BF16 / AMX and on recent GPUs). See `precision_policy`.
    mixed_precision: Literal[False, True, "float16", "bfloat16"] = False
    xla: bool = False
    # TensorFlow's op determinism (slower): a run killed and resumed ends bit-identical to one
    # never stopped. Steers how it runs, not what it trains, so a re-run may change it.
    deterministic: bool = False
    seed: int = 0


@dataclass
class TuneParam:
    """One searched key of `tune.space`: how Keras Tuner draws its value.

    kind  float: a number in [min, max] (log: sampled evenly in log space; min must be > 0)
          int:   an integer in [min, max] (step: the spacing, default 1)
          choice: one of `values`, each a value the key itself accepts
          bool:  true or false
    """

    kind: Literal["float", "int", "choice", "bool"] = "float"
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    values: Optional[List[Any]] = None


def _default_space() -> dict:
    # The CUB reference's default space: the GAN stage's learning rates around the published 2e-4,
    # and lambda around the released 10 over the paper's ablation range (5, 10, 20).
    return {"train": {"g_learning_rate": {"kind": "float", "min": 5e-5, "max": 1e-3, "log": True},
                      "d_learning_rate": {"kind": "float", "min": 5e-5, "max": 1e-3, "log": True},
                      "stream_weight": {"kind": "float", "min": 2.0, "max": 40.0, "log": True}}}


@dataclass
class TuneConfig:
    """`python -m mirrorgan_tf.tune`: the hyperparameter search over the GAN stage (README, Tuning).
    Each command-line flag of `tune` sets the key of the same name."""

    # random, bayesian (Keras Tuner's needs scikit-learn and scipy; setup.py installs both) or hyperband.
    tuner: Literal["random", "bayesian", "hyperband"] = "bayesian"
    # What a trial is scored by, on the first `eval_captions` test captions (fixed noise):
    # attributes_x_spread (shapes: all four attributes right x the spread balance of
    # `samples_per_caption` samples per caption, so a mode-collapsed generator scores 0),
    # attributes (all four right, seen and unseen pairs as one figure), attributes_seen,
    # attributes_unseen, r_precision (an independent DAMSM), fid (minimised); auto =
    # attributes_x_spread where the dataset has attribute labels, else r_precision.
    objective: Literal["auto", "attributes_x_spread", "attributes", "attributes_seen", "attributes_unseen",
                       "r_precision", "fid"] = "auto"
    max_trials: int = 8  # random and bayesian; hyperband sizes its own brackets
    # bayesian: trials drawn at random before the Gaussian process proposes the rest. 0 = half of
    # max_trials, at least 2. Keras Tuner's own default, 3 x the number of searched keys, would make
    # an 8-trial search of shapes.yaml's 5 keys (15 random points) a random search.
    initial_points: int = 0
    trial_steps: int = 0  # GAN steps per trial (hyperband: the most a trial gets); 0 = train.max_steps
    executions_per_trial: int = 1  # trainings per trial (seeds train.seed + k); the objective is their mean
    eval_captions: int = 1000
    # attributes_x_spread: images per caption (each with its own noise), so scoring generates
    # eval_captions x samples_per_caption images; at least 2 (a spread needs two). Other objectives draw 1.
    samples_per_caption: int = 4
    hyperband_factor: int = 3
    # Hyperband's resource is GAN steps, in units of this many steps (its `max_epochs` is
    # trial_steps / hyperband_unit_steps, so a first round trains trial_steps / factor^k steps).
    hyperband_unit_steps: int = 100
    # The search stops after this many failed trials in a row (Keras Tuner's
    # max_consecutive_failed_trials): a space that only fails is a mistake worth stopping for.
    max_consecutive_failures: int = 3
    seed: int = 0  # the oracle's random draws
    # r_precision: a run directory or checkpoint of an independently trained DAMSM; "" = the search
    # trains one once (damsm stage with train.seed + 1 and data.seed + 1).
    eval_damsm: str = ""
    # fid: classify_image_graph_def.pb (the published 2015 graph) or a Keras InceptionV3 weights file.
    inception: str = ""
    classifier_steps: int = 500  # attributes: training steps of the cached attribute classifier
    # section -> key -> the fields of a TuneParam (checked by `search_space`, like every key). A
    # later file or --set that gives a key a mapping with `kind` defines its search anew; a mapping
    # without `kind` edits the fields it names; null drops the key from the search (so a file can
    # search less than its base).
    space: Dict[str, Dict[str, Any]] = field(default_factory=_default_space)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    damsm: DamsmConfig = field(default_factory=DamsmConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    @property
    def image_sizes(self) -> list[int]:
        return [self.model.base_size * 2**i for i in range(self.model.stages)]


def precision_policy(train: "TrainConfig") -> str:
    """The Keras dtype policy `train.mixed_precision` names: "float32", "mixed_float16" (true or
    "float16") or "mixed_bfloat16"."""
    value = train.mixed_precision
    if not value:
        return "float32"
    return "mixed_bfloat16" if value == "bfloat16" else "mixed_float16"


def needs_loss_scaling(train: "TrainConfig") -> bool:
    """float16 underflows small gradients, so its optimizers need a LossScaleOptimizer;
    bfloat16 keeps float32's exponent range and needs none."""
    return precision_policy(train) == "mixed_float16"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _field_type(cls: Any, dotted: str) -> Any:
    """The declared type of `section.key` under dataclass `cls` (None if there is no such key)."""
    tp = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


# Where OmegaConf converts more than we accept: it reads 1 and "yes" as true, 8 as "8" and "8" as
# 8. Those are more often a mistake than a wish, so these types take only their own YAML values.
_STRICT = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _check_values(values: Any, cls: Any, prefix: str, source: str) -> None:
    """Mapping shape and strict scalar types of `values` against dataclass `cls`. Unknown keys
    are left to OmegaConf, which names them."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top level>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        tp, path = hints.get(key), f"{prefix}{key}"
        if dataclasses.is_dataclass(tp):
            _check_values(value, tp, f"{path}.", source)
        elif tp in _STRICT and not _STRICT[tp](value):
            raise ConfigError(f"{source}: '{path}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _merge(cfg: DictConfig, values: Any, source: str) -> DictConfig:
    """`values` (plain YAML data) merged over the structured config `cfg`; errors name `source`."""
    _check_values(values, Config, "", source)
    space = (values.get("tune") or {}).get("space") if isinstance(values.get("tune"), dict) else None
    if isinstance(space, dict):
        # A parameter given anew (with its `kind`) replaces the base's whole, instead of merging
        # into it (a choice must not keep the min and max of the float range it replaces).
        for section, keys in space.items():
            for key, param in (keys or {}).items() if isinstance(keys, dict) else ():
                if isinstance(param, dict) and "kind" in param and key in cfg.tune.space.get(section, {}):
                    del cfg.tune.space[section][key]
    try:
        return OmegaConf.merge(cfg, values)
    except ConfigKeyError as e:
        known = sorted(f.name for f in dataclasses.fields(e.object_type)) if e.object_type else []
        raise ConfigError(f"{source}: unknown key '{e.full_key}' (known: {', '.join(known)})") from None
    except ValidationError as e:
        tp = _field_type(Config, str(e.full_key))
        raise ConfigError(f"{source}: '{e.full_key}': expected {_type_name(tp)}, got {e.value!r} "
                          f"({type(e.value).__name__})") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {str(e).splitlines()[0]}") from None


def _read_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return {} if values is None else values


def _file_layers(path: str, chain: tuple[str, ...] = ()) -> list[tuple[dict, str]]:
    """[(values, file)] of `path` and its bases, the deepest base first. `chain` holds the files
    that named this one as their base, to find a cycle."""
    real = os.path.realpath(path)
    if real in chain:
        names = [*chain[chain.index(real):], real]
        raise ConfigError(f"{path}: the bases form a cycle ({' -> '.join(names)})")
    values = _read_file(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: '<top level>' must be a mapping, got {values!r}")
    base = values.pop("base", None)
    if base is None:
        return [(values, path)]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'base': expected the path of another config file, got {base!r}")
    base_path = os.path.join(os.path.dirname(path), base)
    if not os.path.isfile(base_path):
        raise ConfigError(f"{path}: base {base!r}: no such file ({base_path})")
    return [*_file_layers(base_path, (*chain, real)), (values, path)]


def _parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from None
    for k in reversed(key.strip().split(".")):
        value = {k: value}
    return value


def _resolve(layers: list[tuple[Any, str]]) -> Config:
    cfg = OmegaConf.structured(Config)
    for values, source in layers:
        cfg = _merge(cfg, values, source)
    try:
        resolved = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # e.g. an interpolation that names no key
        raise ConfigError(f"{layers[-1][1] if layers else 'config'}: {str(e).splitlines()[0]}") from None
    validate(resolved)
    return resolved


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """A copy of `cfg` with `--set section.key=value` overrides applied, validated."""
    return _resolve([(to_dict(cfg), "config"), *[(_parse_override(t), f"--set {t}") for t in overrides or []]])


def with_values(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """A copy of `cfg` with {"section.key": value} set, typed and validated as a file would be;
    errors name `source` (e.g. the search trial the values came from)."""
    nested: dict = {}
    for dotted, value in values.items():
        node = nested
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return _resolve([(to_dict(cfg), "config"), (nested, source)])


def validate(cfg: Config) -> None:
    """Cross-field checks that no single type annotation can express, and the `tune` section's
    search space (`search_space`). Raises ConfigError naming the key."""
    _check_fields(cfg)
    search_space(cfg)


def _check_fields(cfg: Config) -> None:
    checks = [
        (cfg.data.words_num > 0, "data.words_num must be positive"),
        (cfg.data.vocab_size >= 0, "data.vocab_size must be >= 0 (0 = from the manifest)"),
        (cfg.model.stages >= 1, "model.stages must be >= 1"),
        (cfg.model.minibatch_std >= 0, f"model.minibatch_std must be >= 0 (0 = off), got {cfg.model.minibatch_std}"),
        (cfg.model.base_size >= 16 and cfg.model.base_size % 16 == 0,
         "model.base_size must be a multiple of 16 (the discriminators downsample by 16)"),
        (cfg.model.embedding_dim % 2 == 0, "model.embedding_dim must be even (bi-LSTM halves)"),
        (cfg.train.batch_size >= 2, "train.batch_size must be >= 2 (wrong pairs need two captions)"),
        # DAMSM's losses score each image against the other captions of its batch: with one pair
        # there is no negative, both losses are exactly 0, and STEM never learns.
        (cfg.damsm.batch_size >= 2, f"damsm.batch_size must be >= 2, got {cfg.damsm.batch_size} (the DAMSM "
                                    "losses need other captions of the batch as negatives)"),
        (not cfg.damsm.word_swap_negatives or cfg.train.wrong_word_swaps,
         "damsm.word_swap_negatives=true swaps the words of train.wrong_word_swaps, which is empty: "
         "name the word classes there (e.g. 'train.wrong_word_swaps=[circle/disc square/block triangle]')"),
        (cfg.stream.batch_size >= 1, f"stream.batch_size must be >= 1, got {cfg.stream.batch_size}"),
        (0.0 <= cfg.stream.label_smoothing < 1.0,
         f"stream.label_smoothing must be in [0, 1) (0 = off), got {cfg.stream.label_smoothing}"),
        (0.0 <= cfg.stream.random_zoom < 1.0,
         f"stream.random_zoom must be in [0, 1) (0 = off), got {cfg.stream.random_zoom}"),
        (0.0 <= cfg.stream.random_translation < 1.0,
         f"stream.random_translation must be in [0, 1) (0 = off), got {cfg.stream.random_translation}"),
        (0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
        (cfg.train.ema_standing_statistics >= 0,
         f"train.ema_standing_statistics must be >= 0 (0 = off), got {cfg.train.ema_standing_statistics}"),
        (cfg.train.mode_seeking_weight >= 0.0,
         f"train.mode_seeking_weight must be >= 0 (0 = off), got {cfg.train.mode_seeking_weight}"),
        (cfg.train.mode_seeking_tau > 0.0,
         f"train.mode_seeking_tau must be > 0 (dsgan's bound on the ratio), got {cfg.train.mode_seeking_tau}"),
        (cfg.train.d_batch_norm == "separate" or not cfg.model.pair_discriminator,
         "train.d_batch_norm=joint needs model.pair_discriminator=false: the pair head reads the generated "
         "images' own encoding, which the joint batch does not keep apart"),
        (cfg.train.d_batch_norm == "separate" or cfg.model.minibatch_std == 0,
         f"train.d_batch_norm=joint needs model.minibatch_std=0 (got {cfg.model.minibatch_std}): its groups would "
         f"mix real and generated images"),
        (cfg.train.eval_every >= 0, f"train.eval_every must be >= 0 (0 = off), got {cfg.train.eval_every}"),
        (cfg.train.eval_captions >= 1, f"train.eval_captions must be >= 1, got {cfg.train.eval_captions}"),
        (cfg.train.eval_samples_per_caption >= 1,
         f"train.eval_samples_per_caption must be >= 1, got {cfg.train.eval_samples_per_caption}"),
        (not cfg.train.eval_every or cfg.train.eval_metrics,
         "train.eval_metrics is empty but train.eval_every is set: name at least one metric, or set eval_every 0"),
        (not cfg.train.best_metric or cfg.train.eval_every > 0,
         f"train.best_metric={cfg.train.best_metric!r} needs evaluations: set train.eval_every > 0"),
        (cfg.tune.max_trials >= 1, f"tune.max_trials must be >= 1, got {cfg.tune.max_trials}"),
        (cfg.tune.initial_points >= 0, f"tune.initial_points must be >= 0 (0: half of max_trials), "
                                       f"got {cfg.tune.initial_points}"),
        (cfg.tune.trial_steps >= 0, f"tune.trial_steps must be >= 0 (0 = train.max_steps), got {cfg.tune.trial_steps}"),
        (cfg.tune.executions_per_trial >= 1,
         f"tune.executions_per_trial must be >= 1, got {cfg.tune.executions_per_trial}"),
        (cfg.tune.eval_captions >= 1, f"tune.eval_captions must be >= 1, got {cfg.tune.eval_captions}"),
        (cfg.tune.samples_per_caption >= 1,
         f"tune.samples_per_caption must be >= 1, got {cfg.tune.samples_per_caption}"),
        # auto is attributes_x_spread on shapes (the dataset with attribute labels).
        (cfg.tune.samples_per_caption >= 2 or not (
            cfg.tune.objective == "attributes_x_spread" or (cfg.tune.objective == "auto" and cfg.data.dataset == "shapes")),
         f"tune.samples_per_caption must be >= 2 for tune.objective={cfg.tune.objective}"
         f"{' (attributes_x_spread on shapes)' if cfg.tune.objective == 'auto' else ''}: it measures the spread "
         f"between samples of one caption; got {cfg.tune.samples_per_caption}"),
        (cfg.tune.hyperband_factor >= 2, f"tune.hyperband_factor must be >= 2, got {cfg.tune.hyperband_factor}"),
        (cfg.tune.hyperband_unit_steps >= 1,
         f"tune.hyperband_unit_steps must be >= 1, got {cfg.tune.hyperband_unit_steps}"),
        (cfg.tune.max_consecutive_failures >= 1,
         f"tune.max_consecutive_failures must be >= 1, got {cfg.tune.max_consecutive_failures}"),
        (cfg.tune.classifier_steps >= 1, f"tune.classifier_steps must be >= 1, got {cfg.tune.classifier_steps}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


_PARAM_FIELDS = {f.name for f in dataclasses.fields(TuneParam)}
_KIND_FIELDS = {"float": {"min", "max", "step", "log"}, "int": {"min", "max", "step", "log"},
                "choice": {"values"}, "bool": set()}


def _number(value: Any) -> Optional[float]:
    """A YAML number (or YAML 1.1's string form of one, such as '1e-4'), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _key_accepts(tp: Any, value: Any) -> tuple[bool, Any]:
    """(whether a key declared as `tp` accepts `value`, the value as that key holds it)."""
    if get_origin(tp) is Literal:  # 1 == True in Python: compare the type too
        return any(value == a and type(value) is type(a) for a in get_args(tp)), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        number = _number(value)
        return number is not None, number
    if tp is str:
        return isinstance(value, str), value
    return False, value


def _with_value(cfg: Config, dotted: str, value: Any) -> Config:
    section, key = dotted.split(".")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: value})})


def search_space(cfg: Config) -> dict[str, TuneParam]:
    """The `tune.space` section checked and parsed: {"section.key": TuneParam}, in file order,
    without the keys set to null.

    Each searched key must be a scalar key of the config outside `tune` (bool, int, float, str or
    one of a fixed set of words), and its range one that key can take: `float` only for float keys,
    `int` for int or float keys, `bool` for bool keys; every choice, and both ends of a range, must
    pass the key's type and the config's cross-field checks (a `train.batch_size` range from 1
    fails, as `--set train.batch_size=1` would). Raises ConfigError naming the tune key and the
    searched key."""
    out: dict[str, TuneParam] = {}
    space = cfg.tune.space or {}
    for section, keys in space.items():
        if keys is None:
            continue
        if not isinstance(keys, dict):
            raise ConfigError(f"tune.space.{section}: expected a mapping of {section}'s keys to searches, got {keys!r}")
        for key, spec in keys.items():
            where = f"tune.space.{section}.{key}"
            target = f"{section}.{key}"
            if spec is None:
                continue
            tp = _field_type(Config, target) if section != "tune" else None
            if tp is None or dataclasses.is_dataclass(tp) or get_origin(tp) in (list, dict):
                known = ", ".join(f.name for f in dataclasses.fields(Config) if f.name != "tune")
                raise ConfigError(f"{where}: '{target}' is not a key the search can set (a scalar key of one of "
                                  f"the sections {known})")
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: expected a mapping (kind, and min/max/log or values), got {spec!r}")
            unknown = sorted(set(spec) - _PARAM_FIELDS)
            if unknown:
                raise ConfigError(f"{where}: unknown field '{unknown[0]}' (known: {', '.join(sorted(_PARAM_FIELDS))})")
            kind = spec.get("kind")
            if kind not in _KIND_FIELDS:
                raise ConfigError(f"{where}.kind: expected one of float, int, choice, bool, got {kind!r}")
            stray = sorted(k for k in spec if k != "kind" and spec[k] not in (None, False) and k not in _KIND_FIELDS[kind])
            if stray:
                raise ConfigError(f"{where}: '{stray[0]}' does not apply to kind {kind}")
            type_name = _type_name(tp)
            if kind == "bool" and tp is not bool:
                raise ConfigError(f"{where}: kind bool, but '{target}' takes {type_name}")
            if kind == "float" and tp is not float:
                raise ConfigError(f"{where}: kind float (a real range), but '{target}' takes {type_name}")
            if kind == "int" and tp not in (int, float):
                raise ConfigError(f"{where}: kind int (an integer range), but '{target}' takes {type_name}")
            param = TuneParam(kind=kind, log=bool(spec.get("log", False)))
            if not isinstance(spec.get("log", False), bool):
                raise ConfigError(f"{where}.log: expected true or false, got {spec['log']!r}")
            candidates: list = []
            if kind in ("float", "int"):
                bounds = {}
                for name in ("min", "max", "step"):
                    raw = spec.get(name)
                    if raw is None:
                        if name != "step":
                            raise ConfigError(f"{where}: kind {kind} needs '{name}'")
                        continue
                    number = _number(raw)
                    if number is None or number != number or abs(number) == float("inf"):
                        raise ConfigError(f"{where}.{name}: expected a finite number, got {raw!r}")
                    if kind == "int" and number != int(number):
                        raise ConfigError(f"{where}.{name}: kind int needs an integer, got {raw!r}")
                    bounds[name] = number
                if bounds["min"] >= bounds["max"]:
                    raise ConfigError(f"{where}: min ({bounds['min']:g}) must be below max ({bounds['max']:g})")
                if param.log and bounds["min"] <= 0:
                    raise ConfigError(f"{where}: log scale needs min > 0, got {bounds['min']:g}")
                if "step" in bounds and bounds["step"] <= 0:
                    raise ConfigError(f"{where}.step: must be > 0, got {bounds['step']:g}")
                param.min, param.max, param.step = bounds["min"], bounds["max"], bounds.get("step")
                if kind == "int":
                    candidates = [int(param.min), int(param.max)]
                else:
                    candidates = [param.min, param.max]
            elif kind == "choice":
                values = spec.get("values")
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{where}.values: kind choice needs a non-empty list, got {values!r}")
                converted = []
                for v in values:
                    ok, v2 = _key_accepts(tp, v)
                    if not ok:
                        raise ConfigError(f"{where}.values: {v!r} is not a value '{target}' takes ({type_name})")
                    converted.append(v2)
                if len({type(v) for v in converted}) > 1:
                    # Keras Tuner's Choice holds values of one type (bool, int, float or str).
                    raise ConfigError(f"{where}.values: mixes types ({values!r}); a choice lists values of one type")
                if len(set(map(repr, converted))) != len(converted):
                    raise ConfigError(f"{where}.values: a value is listed twice ({values!r})")
                param.values = converted
                candidates = converted
            else:
                candidates = [False, True]
            for value in candidates:
                try:
                    _check_fields(_with_value(cfg, target, value))
                except ConfigError as e:
                    raise ConfigError(f"{where}: '{target}' cannot take {value!r}: {e}") from None
            out[target] = param
    return out


def check_replica_batches(cfg: Config, replicas: int) -> None:
    """Refuse global batch sizes that `replicas` replicas cannot split usefully, once the strategy
    is known (the config alone cannot know it). Each stage's global batch is split evenly, so it
    must be divisible by the replica count, every replica must get at least one example, and each
    replica's DAMSM batch at least two: the DAMSM losses compare each image with the other
    captions of its own replica's batch, so with one they are exactly 0. train.xla=true needs a
    single replica (the GAN step's optimizers cannot apply gradients inside an XLA cluster under
    MirroredStrategy). Raises ConfigError naming the key, its value and the replica count."""
    for key, batch, least in (("damsm.batch_size", cfg.damsm.batch_size, 2),
                              ("stream.batch_size", cfg.stream.batch_size, 1),
                              ("train.batch_size", cfg.train.batch_size, 1)):
        if batch // replicas < least:
            why = " (the DAMSM losses need a negative caption on every replica)" if least == 2 else ""
            raise ConfigError(f"{key}={batch} over {replicas} replicas gives {batch / replicas:g} per replica; "
                              f"each needs at least {least}{why}: set {key} to at least {least * replicas}")
        if batch % replicas:
            raise ConfigError(f"{key}={batch} is not divisible by the {replicas} replicas; "
                              f"set it to a multiple of {replicas}")
    if cfg.train.xla and replicas > 1:
        # Checked here, before the first stage, not when the GAN stage builds its step after hours
        # of DAMSM and STREAM (training/gan.py refuses it there too, for callers that skip this).
        raise ConfigError(f"train.xla=true needs a single replica, and the strategy has {replicas}: under "
                          f"MirroredStrategy the jit-compiled GAN step cannot apply gradients; use "
                          f"--strategy one_device or --set train.xla=false")
    pairing = (f"train.mode_seeking_weight={cfg.train.mode_seeking_weight:g}" if cfg.train.mode_seeking_weight > 0
               else "model.pair_discriminator=true" if cfg.model.pair_discriminator else None)
    if pairing and (cfg.train.batch_size // replicas) % 2:
        raise ConfigError(f"{pairing} pairs the examples of each "
                          f"replica's batch, but train.batch_size={cfg.train.batch_size} over {replicas} replicas "
                          f"gives {cfg.train.batch_size // replicas} per replica: make it even")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (the defaults when `path` is None) after its chain of `base:`
    files, apply `--set` overrides, and validate. Raises ConfigError naming the file and key."""
    layers = _file_layers(os.fspath(path)) if path is not None else []
    return _resolve([*layers, *[(_parse_override(t), f"--set {t}") for t in overrides or []]])


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config (what a run actually used) atomically."""
    from mirrorgan_tf.images import atomic_write  # TensorFlow (gfile) only when a config is written

    atomic_write(path, dump_config(cfg))
