"""Import TensorFlow once, quietly: its start-up chatter is not our users' output."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf"]
