"""mirrorgan_tf: MirrorGAN (text-to-image generation by redescription) in TensorFlow / Keras 3."""

__version__ = "0.1.0"
