"""TensorFlow 1 graph-mode definitions used only by tests, written here from published
architectures with the original variable names, so that a tf.compat.v1 Saver writes checkpoints
in the released layout. Nothing here is imported by the package.
"""
