"""Training: DAMSM pretraining (STEM), STREAM pretraining, and the MirrorGAN loop.

damsm.py, stream.py, gan.py   one stage each: its state, its step function, its `train`
loop.py                       the step loop they share (resume, NaN guard, logs, checkpoints)
steps.py                      optimizers and the cross-replica arithmetic of a step
sampler.py                    the GAN stage's sample grids

Only the training CLIs import this package; run directories are read through `mirrorgan_tf.runs`.
"""
