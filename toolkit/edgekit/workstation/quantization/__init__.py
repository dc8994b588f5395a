"""When a quantised artifact fails parity: which layers are to blame, and the repair.

``keras_side``: the float model's layers, their intermediate outputs and the names a converter
gives them. ``measures``: per-layer error arithmetic (SQNR per tensor and per channel, error in
quantisation steps, local and accumulated) and the ranking. ``diagnose_tflite`` and
``diagnose_onnx``: the artifact's own intermediate tensors, mapped to Keras layer names.
``diagnose``: the release's validation images, every quantised artifact, the report and plot.
``report``: the ranked table and the plot. ``repair``: keeping named layers float (TFLite
debugger denylist, a dynamic-range file's float weights, ONNX ``nodes_to_exclude``).
``equalize``: cross-layer equalisation of consecutive layers on a copy of the model.
``levers``: the lever sets and their order; ``search``: ``--keep-float auto``.
"""
