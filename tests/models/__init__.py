"""Tests of orbiter.models: zoo, datasets, training, export and quantization."""
