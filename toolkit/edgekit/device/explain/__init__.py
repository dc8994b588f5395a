"""Explanations without TensorFlow: occlusion maps, map comparison, faithfulness, panels, parity.

Occlusion and the deletion/insertion scores (:mod:`.faithfulness`) need forward passes only, so
they run on every artifact through :mod:`edgekit.device.runtime` (and on the Keras model, given
as a callable by the workstation); the gradient maps (Grad-CAM, HiResCAM, LayerCAM) need
gradients and live in :mod:`edgekit.workstation.gradcam`.
"""
