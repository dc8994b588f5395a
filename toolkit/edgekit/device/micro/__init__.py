"""Microcontrollers: TensorFlow Lite Micro as a verified runtime, its memory, and the C array.

``tflm`` wraps TFLM's host interpreter behind ``LoadedModel``; ``flatbuffer`` reads a model's
ops and tensors without running it; ``arena`` measures the tensor arena from TFLM's own
allocation record; ``boards`` says which boards it fits; ``c_array`` writes the firmware's
``model_int8.h``/``.cc``; ``parity`` adds the ``@ tflite-micro`` rows to ``edgekit verify``.
"""
