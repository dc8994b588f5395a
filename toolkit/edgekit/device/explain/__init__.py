"""Explanations without TensorFlow: occlusion maps, map comparison, panels, explanation parity.

Occlusion needs forward passes only, so it runs on every artifact through
:mod:`edgekit.device.runtime` (and on the Keras model, given as a callable by the
workstation); Grad-CAM needs gradients and lives in :mod:`edgekit.workstation.gradcam`.
"""
