"""Reading pretrained weights that were not saved by this project.

`torch_io` reads PyTorch state dicts (the released MirrorGAN / AttnGAN files and torchvision's
ImageNet files, saved by PyTorch 0.3/0.4 in the legacy non-zip format, as well as newer zip files)
into NumPy arrays and converts PyTorch tensor layouts to Keras ones. It needs the optional `torch`
extra (``pip install -e ".[torch]"``), which training, evaluation and serving never need: torch is
imported only when a `.pth` file is actually read.

This package imports nothing from the rest of the project, so `models/` may use it.
"""

from mirrorgan_tf.weights.torch_io import (  # noqa: F401
    TORCH_EXTRA_HINT,
    conv2d_kernel,
    dense_kernel,
    import_torch,
    is_torch_file,
    read_state_dict,
)
