"""tftrain: train, track and ship TensorFlow 2 / Keras 3 models with MLflow."""

__version__ = "0.1.0"
