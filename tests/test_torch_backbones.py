"""torchvision state dicts -> our Keras networks of torchvision's layout, checked against PyTorch.

The PyTorch side is tests/torch_reference (torchvision's module names and shapes, written from the
architectures), with non-trivial random weights and BatchNorm statistics (torch_reference.init),
saved in PyTorch's legacy (non-zip) format, as the released 0.3/0.4 files are. Inputs are real
CUB photographs. Tolerance: max |keras - torch| <= 1e-4 x max |torch| in float32.
"""

from __future__ import annotations

import keras
import numpy as np

import torch  # the `torch` extra, which the README's test command installs

from mirrorgan_tf.models import backbones  # noqa: E402
from mirrorgan_tf.weights import torch_io  # noqa: E402
from tests.torch_reference import inception, init, resnet  # noqa: E402

REL_TOL = 1e-4


def cub_images(cub_sample, n: int, size: int = 256) -> np.ndarray:
    """n real CUB photographs, one per class folder, resized by PIL to size x size -> float32
    [n, size, size, 3] in [-1, 1] (the project's image range)."""
    from PIL import Image

    folders = sorted((cub_sample / "CUB_200_2011" / "images").iterdir())
    files = [sorted(f.glob("*.jpg"))[0] for f in folders[:n]]
    assert len(files) == n
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
              for f in files]
    return np.stack(arrays) / 127.5 - 1.0


def nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def save_legacy(net, path):
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # a bare pickle stream (legacy), not a zip archive


def relative_error(keras_out, torch_out) -> float:
    t = torch_out.detach().numpy()
    k = np.asarray(keras_out)
    assert k.shape == t.shape
    return float(np.max(np.abs(k - t)) / np.max(np.abs(t)))


def test_resize_matches_pytorch_both_corner_conventions(cub_sample):
    import torch.nn.functional as F

    images = cub_images(cub_sample, 2, size=256)
    for size in (299, 224):  # DAMSM upsamples, STREAM downsamples
        for align in (False, True):
            ours = np.asarray(backbones.resize_bilinear(images, size, align_corners=align))
            ref = F.interpolate(nchw(images), size=(size, size), mode="bilinear", align_corners=align)
            ref = ref.numpy().transpose(0, 2, 3, 1)
            assert np.max(np.abs(ours - ref)) < 1e-5, (size, align)
        # The two conventions differ by 1000 x the tolerance above, so the choice is really tested.
        a = np.asarray(backbones.resize_bilinear(images, size, align_corners=False))
        b = np.asarray(backbones.resize_bilinear(images, size, align_corners=True))
        assert np.max(np.abs(a - b)) > 0.01


def test_torchvision_resnet152_from_legacy_pth_matches_pytorch(cub_sample, tmp_path):
    import torch.nn.functional as F

    images = cub_images(cub_sample, 3)
    mean = torch.tensor(backbones.TORCHVISION_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(backbones.TORCHVISION_STD).view(1, 3, 1, 1)
    x = F.interpolate(nchw(images), size=(224, 224), mode="bilinear", align_corners=False)
    x = ((x + 1) / 2 - mean) / std
    net = init.randomize(resnet.resnet152(), x, seed=1)
    path = tmp_path / "resnet152.pth"
    save_legacy(net, path)
    with torch.no_grad():
        expected = net.features(x)
    assert 0.1 < float(expected.abs().max()) < 100  # 50 blocks neither exploded nor vanished

    # Through STREAM's encoder, so its resize and its choice of input normalisation are tested too.
    from mirrorgan_tf.models.stream import StreamEncoder

    encoder = StreamEncoder(backbone="resnet152", backbone_weights=str(path))
    model = encoder.backbone
    assert model.layout == "torchvision" and model.input_convention == "torch" and not model.trainable
    ours = model(encoder.preprocess(images))
    err = relative_error(ours, expected)
    print(f"resnet152 max abs diff / max abs output: {err:.2e}")
    assert err <= REL_TOL
    assert model.get_layer("layer4.2.bn3").epsilon == 1e-5  # torchvision's BatchNorm2d default


def test_torchvision_inception_v3_from_legacy_pth_matches_pytorch(cub_sample, tmp_path):
    import torch.nn.functional as F

    images = cub_images(cub_sample, 3)
    # AttnGAN's image encoder: nn.Upsample(size=299, mode="bilinear") under PyTorch 0.3 = corners aligned.
    x = F.interpolate(nchw(images), size=(299, 299), mode="bilinear", align_corners=True)
    net = init.randomize(inception.Inception3(), x, seed=2)
    path = tmp_path / "inception_v3.pth"
    save_legacy(net, path)
    with torch.no_grad():
        regions, code = net.regions_and_code(x)
    for t in (regions, code):
        assert 0.1 < float(t.abs().max()) < 100

    model = backbones.inception_v3_regions_and_code(str(path))
    assert model.layout == "torchvision" and model.input_convention == "inception" and not model.trainable
    inputs = backbones.resize_bilinear(images, 299, align_corners=True)
    ours_regions, ours_code = model(inputs)
    err_regions = relative_error(ours_regions, regions.permute(0, 2, 3, 1))
    err_code = relative_error(ours_code, code)
    print(f"inception_v3 max abs diff / max abs output: Mixed_6e {err_regions:.2e}, Mixed_7c pooled {err_code:.2e}")
    assert err_regions <= REL_TOL and err_code <= REL_TOL

    # The comparison sees the traps: Keras' default BatchNorm eps, or a BatchNorm without gamma
    # (keras.applications' InceptionV3 has scale=False), is off by far more than the tolerance.
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.epsilon = 1e-5
    wrong_eps = relative_error(model(inputs)[1], code)
    for layer in bns:
        layer.epsilon = 1e-3
        layer.gamma.assign(np.ones(layer.gamma.shape, "float32"))
    no_gamma = relative_error(model(inputs)[1], code)
    print(f"inception_v3 Mixed_7c with eps 1e-5: {wrong_eps:.2e}; without gamma: {no_gamma:.2e}")
    assert wrong_eps > 100 * REL_TOL and no_gamma > 100 * REL_TOL
