"""Fine-tuning Keras Applications backbones (workstation only).

``registry`` is the data (family -> constructor, preprocessing, sizes, top blocks; no Keras
import), ``preprocessing`` the in-graph layer that does what
``keras.applications.imagenet_utils.preprocess_input`` does, ``finetune`` the model and its
two phases (frozen backbone, then the top blocks).
"""
