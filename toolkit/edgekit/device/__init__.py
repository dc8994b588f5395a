"""The device side: what runs where the model is deployed.

Imports only the standard library, numpy, Pillow, Click, psutil, onnxruntime and ai-edge-litert
(and the floor: ``edgekit.errors``, ``fileio``, ``contract``, ``manifest``) — never TensorFlow,
the converters, scikit-learn, matplotlib or ``edgekit.workstation``. ``lint-imports`` holds it.
"""
