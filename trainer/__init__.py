"""Trainer: ports, exports and documents the agent's emotion models.

Modules: ``models`` (architectures), ``keras_import`` (Keras HDF5 weights), ``checkpoint``,
``calibration`` (real face crops), ``quantize`` (PT2E int8), ``export`` (TFLite conversion
and checks), ``card`` (model cards), ``pipeline`` (the whole export) and ``cli``.
"""
