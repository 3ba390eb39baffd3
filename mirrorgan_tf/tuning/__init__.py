"""Hyperparameter search over the GAN stage with Keras Tuner (`python -m mirrorgan_tf.tune`).

space.py      the config's `tune.space` as keras_tuner.HyperParameters, a trial's values as a config
objective.py  the objective: one figure of the metrics registry on a fixed subset of test captions
tuner.py      GanTuner (keras_tuner.Tuner with run_trial overridden) and the oracle per --tuner
results.py    the table of trials (printed, trials.csv) and best.yaml

This package never imports `mirrorgan_tf.training`: the command (tune.py) hands the tuner the
training command's `train` as the one function a trial trains through.
"""
