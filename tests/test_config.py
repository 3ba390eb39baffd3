import pytest

from mirrorgan_tf.config import Config, ConfigError, dump_config, load_config, save_config
from tests.conftest import CONFIGS


@pytest.mark.parametrize("name", ["shapes", "shapes_smoke", "cub", "coco"])
def test_shipped_configs_load_and_state_every_key(name):
    import yaml

    cfg = load_config(CONFIGS / f"{name}.yaml")
    raw = yaml.safe_load(open(CONFIGS / f"{name}.yaml"))
    resolved = yaml.safe_load(dump_config(cfg))
    # Every file states every key, so reading it shows the whole configuration.
    assert {s: set(v) for s, v in raw.items()} == {s: set(v) for s, v in resolved.items()}


def test_smoke_config_has_the_shape_of_the_default():
    a, b = load_config(CONFIGS / "shapes.yaml"), load_config(CONFIGS / "shapes_smoke.yaml")
    assert a.data.dataset == b.data.dataset == "shapes"
    # The smoke run may have more stages than the default (it keeps three, to walk the published
    # cascade that CUB and COCO train), never fewer; every switch is the default's.
    assert b.model.stages >= a.model.stages
    for switch in ("text_norm", "global_attention_softmax", "global_attention_input"):
        assert getattr(a.model, switch) == getattr(b.model, switch), switch
    assert a.stream.imagenet_normalize == b.stream.imagenet_normalize
    assert a.data.random_flip is False and b.data.random_flip is False


def test_cub_config_is_the_published_reference():
    cfg = load_config(CONFIGS / "cub.yaml")
    assert cfg.image_sizes == [64, 128, 256]
    assert (cfg.model.gf_dim, cfg.model.df_dim, cfg.model.z_dim, cfg.model.condition_dim) == (32, 64, 100, 100)
    assert (cfg.model.r_num, cfg.model.embedding_dim, cfg.data.words_num) == (2, 256, 18)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.stream_weight) == (12, 650, 10.0)
    assert (cfg.train.g_learning_rate, cfg.train.beta_1, cfg.train.beta_2) == (2e-4, 0.5, 0.999)
    assert (cfg.damsm.gamma1, cfg.damsm.gamma2, cfg.damsm.gamma3) == (4.0, 5.0, 10.0)
    assert cfg.train.ema_decay == 0.999
    # The config file and the dataclass defaults agree: the defaults are the reference.
    assert dump_config(cfg) == dump_config(Config())


def test_overrides_parse_yaml_values_and_check_types():
    cfg = load_config(CONFIGS / "shapes.yaml", ["train.batch_size=8", "train.g_learning_rate=1e-3",
                                                "data.random_crop=false", "model.global_attention_softmax=channels"])
    assert cfg.train.batch_size == 8 and cfg.train.g_learning_rate == 1e-3
    assert cfg.data.random_crop is False and cfg.model.global_attention_softmax == "channels"
    # An int where a float is declared is fine; the reverse is not.
    assert load_config(None, ["train.stream_weight=5"]).train.stream_weight == 5.0


@pytest.mark.parametrize("override, message", [
    ("train.batchsize=8", "unknown key 'train.batchsize'"),
    ("nosection.x=1", "unknown key 'nosection'"),
    ("train.batch_size=eight", "'train.batch_size': expected int, got 'eight'"),
    ("train.batch_size=8.5", "'train.batch_size': expected int"),
    ("data.random_flip=1", "'data.random_flip': expected bool"),
    ("model.global_attention_softmax=pixels", "one of 'positions', 'channels'"),
    ("train.batch_size", "expected section.key=value"),
    ("train=3", "'train' must be a mapping"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(CONFIGS / "shapes.yaml", [override])
    assert message in str(e.value)
    assert override.split("=")[0] in str(e.value)


def test_bad_files_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  dataset: shapes\n  wordsnum: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "unknown key 'data.wordsnum'" in str(e.value)
    bad.write_text("model:\n  stages: three\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "'model.stages': expected int" in str(e.value)
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="model.base_size"):
        load_config(None, ["model.base_size=40"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(None, ["train.batch_size=1"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "shapes.yaml", ["train.batch_size=6"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_mixed_precision_names_its_policy_and_loss_scaling():
    from mirrorgan_tf.config import needs_loss_scaling, precision_policy

    expected = {"false": ("float32", False), "true": ("mixed_float16", True),
                "float16": ("mixed_float16", True), "bfloat16": ("mixed_bfloat16", False)}
    for value, (policy, scaling) in expected.items():
        cfg = load_config(CONFIGS / "cub.yaml", [f"train.mixed_precision={value}"])
        assert (precision_policy(cfg.train), needs_loss_scaling(cfg.train)) == (policy, scaling)
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(CONFIGS / "cub.yaml", ["train.mixed_precision=fp8"])
