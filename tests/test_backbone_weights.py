"""`*.backbone_weights` values: what is accepted, and the errors that stop a stage before it
trains a frozen ImageNet backbone on random weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mirrorgan_tf.models import backbones
from mirrorgan_tf.models.backbones import BackboneWeightsError, require_pretrained_backbone, weights_kind
from tests.conftest import REPO


def test_empty_weights_are_an_error_naming_the_key():
    for key in ("damsm.backbone_weights", "stream.backbone_weights"):
        for value in ("", "  ", None):
            with pytest.raises(BackboneWeightsError, match=key) as e:
                weights_kind(value, key)
            for way in ("imagenet", ".h5", ".pth", "random"):
                assert way in str(e.value)
    # The builders refuse before building anything; the encoders pass their own key.
    with pytest.raises(BackboneWeightsError, match="stream.backbone_weights is empty"):
        backbones.resnet152_code("")
    from mirrorgan_tf.models.damsm import DamsmImageEncoder

    with pytest.raises(BackboneWeightsError, match="damsm.backbone_weights is empty"):
        DamsmImageEncoder(backbone="inception_v3", backbone_weights="")
    DamsmImageEncoder(backbone="cnn", backbone_weights="")  # the small CNN trains: no weights needed


def test_training_stages_refuse_random_backbones(tmp_path):
    key = "stream.backbone_weights"
    with pytest.raises(BackboneWeightsError, match=r"stream.backbone_weights=random: .*random weights") as e:
        require_pretrained_backbone(key, "random")
    assert "imagenet" in str(e.value) and ".pth" in str(e.value)
    with pytest.raises(BackboneWeightsError, match=key):
        require_pretrained_backbone(key, "")
    missing = tmp_path / "resnet152.pth"
    with pytest.raises(FileNotFoundError, match=f"{key}={missing}"):
        require_pretrained_backbone(key, str(missing))
    # Accepted: imagenet (not downloaded by the check) and existing files of either kind.
    assert require_pretrained_backbone(key, "imagenet") is None
    for name, kind in (("w.pth", "torch"), ("w.pt", "torch"), ("w.h5", "keras"), ("w.weights.h5", "keras")):
        (tmp_path / name).write_bytes(b"x")
        assert require_pretrained_backbone(key, str(tmp_path / name)) is None
        assert weights_kind(str(tmp_path / name), key) == kind
    assert weights_kind("random", key) == "random" and weights_kind("imagenet", key) == "imagenet"


def test_imagenet_without_network_fails_at_start_naming_file_and_cache(tmp_path):
    """This machine has no network: Keras' download fails (DNS), and the error says where to put
    the file by hand. KERAS_HOME points Keras at an empty cache; a subprocess, bounded in time,
    because Keras reads KERAS_HOME when it is imported."""
    home = tmp_path / "keras_home"
    script = textwrap.dedent("""
        from mirrorgan_tf.models import backbones
        try:
            backbones.resnet152_code("imagenet")
        except backbones.BackboneWeightsError as e:
            print("ERROR:", e)
        else:
            print("BUILT")
    """)
    env = {**os.environ, "KERAS_HOME": str(home), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.monotonic() - start < 120
    message = r.stdout[r.stdout.index("ERROR:"):]
    assert "stream.backbone_weights=imagenet" in message
    assert "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(home / "models") in message
    assert list((home / "models").iterdir()) == []  # no half-downloaded file left behind


def test_keras_cache_dir_follows_keras_home():
    import keras

    assert backbones.keras_cache_dir() == os.path.join(os.path.expanduser(keras.src.backend.config.keras_home()),
                                                       "models")


def test_reading_pth_without_torch_names_the_extra(tmp_path, monkeypatch):
    from mirrorgan_tf.weights import torch_io

    path = tmp_path / "resnet152.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets without the extra
    with pytest.raises(ImportError, match=r'pip install -e "\.\[torch\]"'):
        torch_io.read_state_dict(str(path), "stream.backbone_weights")
    with pytest.raises(FileNotFoundError, match="stream.backbone_weights"):
        torch_io.read_state_dict(str(tmp_path / "absent.pth"), "stream.backbone_weights")


def test_state_dict_reader_and_layout_errors(tmp_path):
    import torch  # the `torch` extra, which the README's test command installs
    from mirrorgan_tf.weights import torch_io
    from tests.torch_reference import resnet

    # Legacy and zip formats read alike; tensors come back as float32 / int64 arrays.
    sd = {"conv.weight": torch.randn(4, 3, 2, 2, dtype=torch.float64), "bn.num_batches_tracked": torch.tensor(7)}
    for legacy in (True, False):
        path = tmp_path / f"sd{legacy}.pth"
        torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=not legacy)
        got = torch_io.read_state_dict(str(path))
        assert got["conv.weight"].dtype == np.float32 and got["bn.num_batches_tracked"].dtype == np.int64
        np.testing.assert_allclose(got["conv.weight"], sd["conv.weight"].numpy(), rtol=1e-6)
    # NCHW -> NHWC: element [o, i, y, x] lands at [y, x, i, o].
    k = torch_io.conv2d_kernel(got["conv.weight"])
    assert k.shape == (2, 2, 3, 4) and k[1, 0, 2, 3] == got["conv.weight"][3, 2, 1, 0]
    # A pickled module (not a state dict) is refused without running its code.
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(ValueError, match="module.pth"):
        torch_io.read_state_dict(str(tmp_path / "module.pth"))

    model = backbones.torchvision_resnet152()
    state = {k: v.numpy() for k, v in resnet.resnet152().state_dict().items()}
    unused = backbones.load_torch_state_dict(model, dict(state))
    assert sorted(unused) == sorted(["fc.bias", "fc.weight"] + [k for k in state if k.endswith("num_batches_tracked")])
    np.testing.assert_array_equal(model.get_layer("layer3.5.conv2").kernel.numpy(),
                                  state["layer3.5.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("layer2.0.downsample.1").moving_variance.numpy(),
                                  state["layer2.0.downsample.1.running_var"])
    # The show-and-tell encoder's nn.Sequential numbering (resnet.0 = conv1, resnet.4 = layer1, ...).
    numbered = {k.replace("conv1.", "resnet.0.", 1) if k.startswith("conv1.") else
                k.replace("bn1.", "resnet.1.", 1) if k.startswith("bn1.") else
                "resnet." + str(int(k[5]) + 3) + k[6:] if k.startswith("layer") else k: v for k, v in state.items()}
    assert "resnet.7.2.bn3.weight" in numbered
    assert backbones._canonical_keys(numbered, model) == state
    # A wrong shape or a missing key names the file and the key.
    bad = dict(state, **{"layer1.0.conv2.weight": np.zeros((64, 64, 1, 1), np.float32)})
    del bad["layer4.2.bn3.running_var"]
    with pytest.raises(ValueError, match=r"bad\.pth.*1 missing keys.*layer4\.2\.bn3\.running_var.*layer1\.0\.conv2"):
        backbones.load_torch_state_dict(model, bad, "bad.pth")
