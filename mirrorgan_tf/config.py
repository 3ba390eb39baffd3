"""The one config system: typed dataclasses, loaded from YAML files in `configs/`.

A config file may only name keys that exist here, with values of the declared type; anything else
is an error that names the key and the file. Any key can be overridden from the command line with
`--set section.key=value` (the value is parsed as YAML, so `8`, `2e-4`, `true` and `[1, 2]` work).

The dataclass defaults are the published MirrorGAN configuration for CUB birds
(`MIRRORGAN_REFERENCE.md`); the YAML files state every value explicitly anyway, so a reader of
`configs/cub.yaml` sees the whole configuration without opening this file.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


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
    shuffle_buffer: int = 2048
    seed: int = 0


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


@dataclass
class DamsmConfig:
    # Image encoder backbone: frozen Inception-v3 for CUB/COCO, a small CNN for shapes.
    backbone: Literal["inception_v3", "cnn"] = "inception_v3"
    backbone_weights: str = ""  # local weights file (nothing is downloaded at run time)
    image_size: int = 299
    cnn_width: int = 32  # channels of the first block of the small CNN backbone
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


@dataclass
class StreamConfig:
    backbone: Literal["resnet152", "cnn"] = "resnet152"
    backbone_weights: str = ""
    image_size: int = 224
    cnn_width: int = 32
    embedding_dim: int = 256
    hidden_dim: int = 512
    max_len: int = 20
    bn_momentum: float = 0.01  # PyTorch convention (weight of the new batch statistics)
    # The released code feeds generated images in [-1, 1] to a captioner trained on
    # ImageNet-normalised inputs; True normalises as the captioner expects.
    imagenet_normalize: bool = True
    # A "show and tell" recipe (the authors name it but ship no script).
    batch_size: int = 128
    epochs: int = 5
    learning_rate: float = 1e-3
    max_steps: int = 0  # 0 = run all epochs
    checkpoint: str = ""  # a STREAM checkpoint (run dir or checkpoint path) to reuse instead of training


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
    kl_weight: float = 1.0
    damsm_weight: float = 0.0  # AttnGAN's DAMSM term in the G loss; not in MirrorGAN's
    ema_decay: float = 0.999
    # Warm the EMA up as tf.train.ExponentialMovingAverage does with num_updates: decay
    # min(ema_decay, (1 + step) / (10 + step)). The original has none, and over 1,000 steps a
    # 0.999 average still holds 37 % of the untrained generator; long runs end the same either way.
    ema_warmup: bool = False
    checkpoint_every: int = 2000  # steps
    sample_every: int = 2000
    log_every: int = 100
    keep_checkpoints: int = 3
    # Synchronise BatchNorm statistics across replicas (only matters with several replicas): the
    # same statistics as one device on the global batch.
    sync_batch_norm: bool = True
    # Mixed precision: false (float32), true or "float16" (mixed_float16, with loss scaling), or
    # "bfloat16" (mixed_bfloat16: float32's range, so no loss scaling is needed; oneDNN runs it
    # on CPUs with AVX512-BF16 / AMX and on recent GPUs). See `precision_policy`.
    mixed_precision: Literal[False, True, "float16", "bfloat16"] = False
    xla: bool = False
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    damsm: DamsmConfig = field(default_factory=DamsmConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

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


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `where`."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "2e-4" (no dot) as a string; take it as the number everyone means.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only reached when a new field type is added without support
        raise TypeError(f"config field {where} has unsupported type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _merge(obj: Any, values: dict, prefix: str, source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top level>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{path}' (known: {', '.join(sorted(names))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _merge(getattr(obj, key), value, f"{path}.", source)
        else:
            try:
                setattr(obj, key, _coerce(value, tp, f"'{path}'"))
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from None
    return key.strip().split("."), value


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    for text in overrides or []:
        keys, value = _parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, "", f"--set {text}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that no single type annotation can express."""
    checks = [
        (cfg.data.words_num > 0, "data.words_num must be positive"),
        (cfg.data.vocab_size >= 0, "data.vocab_size must be >= 0 (0 = from the manifest)"),
        (cfg.model.stages >= 1, "model.stages must be >= 1"),
        (cfg.model.base_size >= 16 and cfg.model.base_size % 16 == 0,
         "model.base_size must be a multiple of 16 (the discriminators downsample by 16)"),
        (cfg.model.embedding_dim % 2 == 0, "model.embedding_dim must be even (bi-LSTM halves)"),
        (cfg.train.batch_size >= 2, "train.batch_size must be >= 2 (wrong pairs need two captions)"),
        (0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or the defaults when `path` is None) and apply `--set` overrides."""
    cfg = Config()
    if path is not None:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        _merge(cfg, values, "", path)
    return apply_overrides(cfg, overrides)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config (what a run actually used) atomically."""
    import tensorflow as tf  # gfile, so run directories may live on gs://

    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(dump_config(cfg))
    tf.io.gfile.rename(tmp, path, overwrite=True)
