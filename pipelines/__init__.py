"""Dataset preparation: raw datasets -> sharded TFRecords + vocabulary + manifest.

Knows file formats, nothing about models. Kept free of TensorFlow imports at package level so the
image workers it spawns start quickly.
"""
