"""Keras' download of Fashion-MNIST: the last place the dataset lookup tries, on a workstation."""

from __future__ import annotations

from pathlib import Path

from edgekit.device import datasets


def download() -> Path | None:
    """Keras' download of Fashion-MNIST into its cache; None where it fails (no internet)."""
    try:
        import keras
    except ImportError:
        return None
    try:
        keras.datasets.fashion_mnist.load_data()
    except Exception:  # no internet, proxy, disk: any failure means "not available"
        return None
    folder = datasets.keras_cache_dir()
    return folder if datasets.has_all_files(folder) else None
