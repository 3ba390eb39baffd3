"""Serving: the SavedModel export for TensorFlow Serving (export.py) and a model server that
speaks TensorFlow Serving's gRPC and REST APIs (server.py, which lists its layers)."""
