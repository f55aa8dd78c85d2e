"""Shared test set-up: 8 simulated CPU devices (must be set before JAX initialises)."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
