"""Keras layers and models of MirrorGAN, one file per idea of the paper. Nothing about training."""
