"""edgekit: train an image classifier, export it for devices, and prove the device runs it.

Importing the package is cheap and TensorFlow-free; workstation modules (``models``,
``training``, ``evaluation``, ``export``) import TensorFlow inside themselves.
"""

__version__ = "0.1.0"
