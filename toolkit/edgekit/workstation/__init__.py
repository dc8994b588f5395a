"""The workstation side: datasets pipelines, models, training, evaluation, tuning, export, plots.

These modules need the ``train`` extra (TensorFlow, tf2onnx, onnx, scikit-learn, matplotlib).
Importing this package is cheap: each module imports what it needs itself.
"""
