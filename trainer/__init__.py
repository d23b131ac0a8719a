"""Trainer: ports, trains, exports and documents the agent's emotion models.

Modules: ``models`` (architectures), ``keras_import`` (Keras HDF5 weights), ``checkpoint``,
``calibration`` (real face crops), ``quantize`` (PT2E int8), ``quantization`` (PTQ or QAT
settings), ``qat`` (quantization-aware training), ``export`` (TFLite conversion, int8 and
float, and checks), ``card`` (model cards), ``pipeline`` (the export of the default model) and ``cli``.
Training: ``data`` (FER2013 and FER+ files), ``datamodule``, ``module`` (the Lightning module),
``callbacks``, ``loggers``, ``training_cli`` (``trainer fit``/``test``), ``trained`` (reloading a
run), ``dataset_export`` (export gated on test accuracy), ``evaluation`` and ``synthetic``
(generated data for tests and benchmarks).
"""
