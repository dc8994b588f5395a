"""The workstation's quiet TensorFlow start: which stderr lines are dropped, and that the rest
is written back (the command itself: tests/test_cli.py::test_corrupt_keras_model)."""

import os

from edgekit.workstation import tf_startup

NOISE = [
    tf_startup.ABSL_PREAMBLE,
    "I0000 00:00:1796609962.806656   11720 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "I0000 00:00:1796610168.474020   13821 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with "
    "the appropriate compiler flags.",
    "I0000 00:00:1796610168.474020   13821 port.cc:153] oneDNN custom operations are on.",
]
KEPT = [
    "E0000 00:00:1796610801.324811   18906 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
    "W0000 00:00:1796610801.324811   18906 some_kernel.cc:7] a real warning",
    "<string>:8: UserWarning: a Python warning",
    "To enable the following instructions: (not after an informational line, so kept)",
    "Error: something the user must see",
]


def test_start_up_lines_are_dropped_and_everything_else_kept():
    text = "\n".join([*NOISE, KEPT[0], KEPT[1], KEPT[2], NOISE[0], KEPT[3], KEPT[4]]) + "\n"
    assert tf_startup.without_start_up_lines(text) == "\n".join(KEPT) + "\n"
    assert tf_startup.without_start_up_lines("") == ""


def test_the_quieted_block_writes_the_rest_back_to_stderr(capfd, monkeypatch):
    monkeypatch.delenv("EDGEKIT_VERBOSE", raising=False)
    with tf_startup.start_up_quieted():
        os.write(2, ("\n".join([NOISE[0], NOISE[1], KEPT[0]]) + "\n").encode())
    assert capfd.readouterr().err == KEPT[0] + "\n"
    monkeypatch.setenv("EDGEKIT_VERBOSE", "1")  # --verbose: everything through
    with tf_startup.start_up_quieted():
        os.write(2, (NOISE[1] + "\n").encode())
    assert capfd.readouterr().err == NOISE[1] + "\n"


def test_install_is_idempotent_and_keeps_the_users_settings(monkeypatch):
    import sys

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # a user debugging TensorFlow
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    tf_startup.install()
    tf_startup.install()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert sum(isinstance(finder, tf_startup.QuietImportFinder) for finder in sys.meta_path) == 1
