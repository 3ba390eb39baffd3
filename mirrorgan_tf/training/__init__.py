"""Training: DAMSM pretraining (STEM), STREAM pretraining, and the MirrorGAN loop.

Each trainer is a step function plus what it checkpoints; `loop.py` holds what they share.
"""
