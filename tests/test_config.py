import pytest

from mirrorgan_tf.config import (Config, ConfigError, check_replica_batches, dump_config, load_config,
                                 save_config, to_dict)
from tests.conftest import CONFIGS


@pytest.mark.parametrize("name", ["shapes", "cub"])
def test_shipped_configs_load_and_state_every_key(name):
    import yaml

    cfg = load_config(CONFIGS / f"{name}.yaml")
    raw = yaml.safe_load(open(CONFIGS / f"{name}.yaml"))
    resolved = yaml.safe_load(dump_config(cfg))
    # Every file states every key, so reading it shows the whole configuration.
    assert {s: set(v) for s, v in raw.items()} == {s: set(v) for s, v in resolved.items()}


@pytest.mark.parametrize("name, base", [("shapes_smoke", "shapes"), ("coco", "cub")])
def test_derived_configs_list_only_what_differs_from_their_base(name, base):
    import yaml

    raw = yaml.safe_load(open(CONFIGS / f"{name}.yaml"))
    assert raw.pop("base") == f"{base}.yaml"
    parent = to_dict(load_config(CONFIGS / f"{base}.yaml"))
    stated = [(s, k) for s, section in raw.items() for k in section]
    assert stated and all(raw[s][k] != parent[s][k] for s, k in stated), "a key restates its base's value"
    # Resolved, the file is complete: every key of the base, with the stated ones changed.
    resolved = to_dict(load_config(CONFIGS / f"{name}.yaml"))
    assert resolved == {s: {k: raw.get(s, {}).get(k, v) for k, v in section.items()} for s, section in parent.items()}


def test_coco_is_cub_with_attngans_coco_values():
    cfg = load_config(CONFIGS / "coco.yaml")
    assert (cfg.data.dataset, cfg.data.dir, cfg.data.words_num) == ("coco", "data/coco", 12)
    assert (cfg.model.gf_dim, cfg.model.df_dim, cfg.model.r_num) == (48, 96, 3)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.stream_weight) == (14, 120, 10.0)
    assert cfg.damsm.backbone_weights == cfg.stream.backbone_weights == "imagenet"
    assert cfg.image_sizes == [64, 128, 256] and cfg.model.text_norm == "none"


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


def test_saved_config_of_a_derived_file_is_complete(tmp_path):
    import yaml

    cfg = load_config(CONFIGS / "shapes_smoke.yaml", ["train.max_steps=9"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved and {s: set(v) for s, v in saved.items()} == {s: set(v) for s, v in to_dict(Config()).items()}
    assert load_config(tmp_path / "config.yaml") == cfg and cfg.train.max_steps == 9 and cfg.model.gf_dim == 4


def test_a_chain_of_bases_resolves_nearest_last(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("base: sub/b.yaml\ntrain:\n  batch_size: 6\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../c.yaml\ntrain:\n  batch_size: 5\n  epochs: 7\n")
    (tmp_path / "c.yaml").write_text("base: %s\ntrain:\n  epochs: 3\n  seed: 4\n" % (CONFIGS / "shapes.yaml"))
    cfg = load_config(tmp_path / "a.yaml", ["train.seed=8"])
    # Each file overrides its base; paths are relative to the file naming them; --set comes last.
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.seed) == (6, 7, 8)
    assert cfg.data.dataset == "shapes" and cfg.model.gf_dim == 16


def test_bad_bases_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(a)
    assert f"{a}: base 'nowhere.yaml': no such file ({tmp_path / 'nowhere.yaml'})" == str(e.value)
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(a)
    assert "the bases form a cycle" in str(e.value) and f"{a} -> {b} -> {a}" in str(e.value)
    a.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    a.write_text("base: [b.yaml]\n")
    with pytest.raises(ConfigError, match=r"a.yaml: 'base': expected the path of another config file"):
        load_config(a)
    # An error in a base names the base file, not the file that named it.
    a.write_text("base: b.yaml\n")
    b.write_text("train:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(a)
    assert str(e.value).startswith(f"{b}: 'train.batch_size': expected int, got 'many'")


@pytest.mark.parametrize("text, message", [
    ("data:\n  random_flip: yes_please\n", "'data.random_flip': expected bool, got 'yes_please'"),
    ("data:\n  random_flip: 0\n", "'data.random_flip': expected bool, got 0 (int)"),
    ("data:\n  dir: 12\n", "'data.dir': expected str, got 12 (int)"),
    ("train:\n  batch_size: '8'\n", "'train.batch_size': expected int, got '8' (str)"),
    ("train:\n  g_learning_rate: fast\n", "'train.g_learning_rate': expected float, got 'fast' (str)"),
    ("model:\n  text_norm: l2\n", "'model.text_norm': expected one of 'none', 'rms', got 'l2'"),
    ("- 1\n- 2\n", "'<top level>' must be a mapping"),
])
def test_file_values_are_typed_strictly(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value)


def test_floats_take_ints_and_exponent_strings():
    cfg = load_config(CONFIGS / "shapes.yaml", ["train.g_learning_rate=2e-4", "train.kl_weight=2"])
    assert cfg.train.g_learning_rate == 2e-4 and cfg.train.kl_weight == 2.0 and type(cfg.train.kl_weight) is float


def test_a_damsm_batch_needs_a_negative():
    # One pair per batch: no mismatched caption, both DAMSM losses exactly 0, STEM never learns.
    with pytest.raises(ConfigError, match=r"damsm.batch_size must be >= 2, got 1"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.batch_size=1"])
    with pytest.raises(ConfigError, match=r"stream.batch_size must be >= 1, got 0"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["stream.batch_size=0"])
    assert load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.batch_size=2"]).damsm.batch_size == 2


def test_per_replica_batches_are_checked_against_the_replica_count():
    # damsm 8, stream 8, train 4; mode seeking's even per-replica batch is tested on its own (below)
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_weight=0"])
    check_replica_batches(cfg, 1)
    check_replica_batches(cfg, 4)  # damsm 2, stream 2, train 1 per replica
    with pytest.raises(ConfigError) as e:
        check_replica_batches(cfg, 8)  # one DAMSM pair per replica: no negative
    assert "damsm.batch_size=8 over 8 replicas gives 1 per replica" in str(e.value)
    assert "at least 2" in str(e.value) and "set damsm.batch_size to at least 16" in str(e.value)
    big = load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.batch_size=16", "stream.batch_size=16",
                                                       "train.mode_seeking_weight=0"])
    with pytest.raises(ConfigError, match=r"train.batch_size=4 over 8 replicas gives 0.5 per replica; "
                                          r"each needs at least 1"):
        check_replica_batches(big, 8)
    with pytest.raises(ConfigError, match=r"stream.batch_size=8 is not divisible by the 3 replicas"):
        check_replica_batches(load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.batch_size=9"]), 3)
    with pytest.raises(ConfigError, match=r"damsm.batch_size=2 over 2 replicas gives 1 per replica; each needs "
                                          r"at least 2 \(the DAMSM losses need a negative caption"):
        check_replica_batches(load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.batch_size=2"]), 2)
    with pytest.raises(ConfigError, match=r"damsm.batch_size=10 is not divisible by the 4 replicas"):
        check_replica_batches(load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.batch_size=10", "stream.batch_size=8"]), 4)


def test_xla_with_several_replicas_is_refused_before_any_stage():
    """Checked with the batches, when the strategy is known (train.py, before the data and DAMSM),
    not when the GAN stage builds its step after DAMSM and STREAM have trained."""
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", ["train.xla=true", "train.mode_seeking_weight=0"])
    check_replica_batches(cfg, 1)
    with pytest.raises(ConfigError, match=r"train.xla=true needs a single replica, and the strategy has 2: .*"
                                          r"--strategy one_device or --set train.xla=false"):
        check_replica_batches(cfg, 2)
    check_replica_batches(load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_weight=0"]), 2)


def test_mode_seeking_needs_an_even_batch_per_replica_and_a_non_negative_weight():
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_weight=1", "train.batch_size=6",
                                                       "damsm.batch_size=12", "stream.batch_size=6"])
    check_replica_batches(cfg, 1)  # 6 per replica: three pairs
    with pytest.raises(ConfigError, match=r"train.mode_seeking_weight=1 pairs the examples of each replica's batch, "
                                          r"but train.batch_size=6 over 2 replicas gives 3 per replica: make it even"):
        check_replica_batches(cfg, 2)
    check_replica_batches(load_config(CONFIGS / "shapes_smoke.yaml", ["train.batch_size=6", "damsm.batch_size=12",
                                                                      "stream.batch_size=6", "train.mode_seeking_weight=0"]),
                          2)  # off: odd is fine
    with pytest.raises(ConfigError, match=r"train.mode_seeking_weight must be >= 0 \(0 = off\), got -1"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_weight=-1"])
    with pytest.raises(ConfigError, match=r"train.mode_seeking_tau must be > 0 \(dsgan's bound on the ratio\), got 0"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_tau=0"])
    with pytest.raises(ConfigError, match="mode_seeking_form"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_form=dsgn"])
    # The published configs keep the published loss.
    assert load_config(CONFIGS / "cub.yaml").train.mode_seeking_weight == 0.0
    assert load_config(CONFIGS / "coco.yaml").train.mode_seeking_weight == 0.0
    assert load_config(CONFIGS / "cub.yaml").train.mode_seeking_stages == "last"
    with pytest.raises(ConfigError, match=r"train.mode_seeking_stages.*first"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_stages=first"])


def test_stream_floor_is_none_real_or_real_words_and_the_published_configs_keep_none():
    for name in ("cub.yaml", "coco.yaml"):
        assert load_config(CONFIGS / name).train.stream_floor == "none"
    for value in ("real", "real_words"):
        assert load_config(CONFIGS / "shapes_smoke.yaml", [f"train.stream_floor={value}"]).train.stream_floor == value
    with pytest.raises(ConfigError, match=r"train.stream_floor.*real"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.stream_floor=fake"])


def test_d_batch_norm_is_separate_or_joint_the_published_configs_keep_separate_and_joint_refuses_minibatch_std():
    for name in ("cub.yaml", "coco.yaml", "shapes.yaml"):
        assert load_config(CONFIGS / name).train.d_batch_norm == "separate"
    assert load_config(CONFIGS / "shapes_smoke.yaml", ["train.d_batch_norm=joint"]).train.d_batch_norm == "joint"
    with pytest.raises(ConfigError, match=r"train.d_batch_norm.*together"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.d_batch_norm=together"])
    with pytest.raises(ConfigError, match=r"train.d_batch_norm=joint needs model.minibatch_std=0 \(got 4\)"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.d_batch_norm=joint", "model.minibatch_std=4"])


def test_mode_seeking_gain_invariant_is_off_in_every_shipped_config():
    for name in ("cub.yaml", "coco.yaml", "shapes.yaml", "shapes_smoke.yaml"):
        assert load_config(CONFIGS / name).train.mode_seeking_gain_invariant is False
    assert load_config(CONFIGS / "shapes_smoke.yaml", ["train.mode_seeking_gain_invariant=true"]).train.mode_seeking_gain_invariant


def test_stream_label_smoothing_is_in_0_1_and_the_published_configs_keep_0():
    for name in ("cub.yaml", "coco.yaml", "shapes.yaml"):
        assert load_config(CONFIGS / name).stream.label_smoothing == 0.0
    assert load_config(CONFIGS / "shapes_smoke.yaml", ["stream.label_smoothing=0.1"]).stream.label_smoothing == 0.1
    for value in ("-0.1", "1.0"):
        with pytest.raises(ConfigError, match=r"stream.label_smoothing must be in \[0, 1\)"):
            load_config(CONFIGS / "shapes_smoke.yaml", [f"stream.label_smoothing={value}"])


def test_stream_jitter_is_in_0_1_and_the_published_configs_keep_it_off():
    for name in ("cub.yaml", "coco.yaml", "shapes.yaml"):
        cfg = load_config(CONFIGS / name)
        assert (cfg.stream.random_zoom, cfg.stream.random_translation) == (0.0, 0.0)
    for key in ("random_zoom", "random_translation"):
        assert getattr(load_config(CONFIGS / "shapes_smoke.yaml", [f"stream.{key}=0.1"]).stream, key) == 0.1
        for value in ("-0.1", "1.0"):
            with pytest.raises(ConfigError, match=rf"stream.{key} must be in \[0, 1\)"):
                load_config(CONFIGS / "shapes_smoke.yaml", [f"stream.{key}={value}"])


def test_mixed_precision_names_its_policy_and_loss_scaling():
    from mirrorgan_tf.config import needs_loss_scaling, precision_policy

    expected = {"false": ("float32", False), "true": ("mixed_float16", True),
                "float16": ("mixed_float16", True), "bfloat16": ("mixed_bfloat16", False)}
    for value, (policy, scaling) in expected.items():
        cfg = load_config(CONFIGS / "cub.yaml", [f"train.mixed_precision={value}"])
        assert (precision_policy(cfg.train), needs_loss_scaling(cfg.train)) == (policy, scaling)
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(CONFIGS / "cub.yaml", ["train.mixed_precision=fp8"])


def test_pair_discriminator_is_off_in_every_shipped_config_and_refuses_joint_batch_norm():
    for name in ("cub.yaml", "coco.yaml", "shapes.yaml", "shapes_smoke.yaml"):
        assert load_config(CONFIGS / name).model.pair_discriminator is False, name
    with pytest.raises(ConfigError, match=r"train.d_batch_norm=joint needs model.pair_discriminator=false"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["train.d_batch_norm=joint", "model.pair_discriminator=true"])
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", ["model.pair_discriminator=true", "train.mode_seeking_weight=0",
                                                       "train.batch_size=6"])
    with pytest.raises(ConfigError, match=r"model.pair_discriminator=true pairs the examples of each replica's batch"):
        check_replica_batches(cfg, 2)
