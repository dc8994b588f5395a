"""Microcontrollers: TFLM as a verified runtime, its arena, its ops, the C array, quiet runtimes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPORTED, has_module, run_cli
from edgekit import cli, errors, runtime
from edgekit.device import verify as verify_module
from edgekit.device.micro import arena, c_array, flatbuffer, report, tflm

pytestmark = pytest.mark.skipif(not has_module("tflite_micro"),
                                reason="needs the micro extra (tflite-micro)")

INT8 = EXPORTED / "model_int8.tflite"
ROW = "model_int8.tflite @ tflite-micro"


def patched_op(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of ``source`` whose operator code ``old`` reads ``new`` (both code fields)."""
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray(source.read_bytes())
    model = schema.Model.GetRootAs(bytes(data), 0)
    old_code, new_code = getattr(schema.BuiltinOperator, old), getattr(schema.BuiltinOperator, new)
    for index in range(model.OperatorCodesLength()):
        table = model.OperatorCodes(index)._tab
        if max(model.OperatorCodes(index).BuiltinCode(),
               model.OperatorCodes(index).DeprecatedBuiltinCode()) != old_code:
            continue
        for field, width in ((4, 1), (10, 4)):  # deprecated_builtin_code: int8; builtin_code: int32
            offset = table.Offset(field)
            if offset:
                data[table.Pos + offset:table.Pos + offset + width] = new_code.to_bytes(width, "little")
    target.write_bytes(bytes(data))
    return target


def smallest_arena_tflm_accepts(path: Path) -> int:
    """Independently of edgekit: bisect the arena size TFLM's interpreter builds the model in."""
    script = """
import os, sys
from tflite_micro.python.tflite_micro import runtime
data = open(sys.argv[1], 'rb').read()
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
def fits(size):
    try:
        runtime.Interpreter.from_bytes(data, arena_size=size)
        return True
    except RuntimeError:
        return False
low, high = 1024, 1 << 20
while high - low > 16:
    middle = (low + high) // 2
    low, high = (low, middle) if fits(middle) else (middle, high)
print(high)
"""
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, timeout=120, check=True)
    return int(result.stdout)


def test_tflm_runs_the_int8_file_like_litert(exported):
    golden = np.load(exported / "golden.npz")
    micro = runtime.load(INT8, runtime="tflite-micro")
    litert = runtime.load(INT8)
    assert isinstance(micro, tflm.MicroModel) and micro.labels == litert.labels
    ours, theirs = micro.predict(golden["images"]), litert.predict(golden["images"])
    assert ours.shape == theirs.shape == (len(golden["images"]), 10)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    # Both dequantise int8 outputs of scale 1/256: TFLM's kernels differ by a few steps at most.
    assert np.abs(ours - theirs).max() <= 8 / 256 + 1e-6
    assert (ours.argmax(1) == golden["labels"]).mean() >= 0.9


def test_parallel_workers_answer_as_one_interpreter(exported, monkeypatch):
    images = np.load(exported / "golden.npz")["images"][:120]
    model = runtime.load(INT8, runtime="tflite-micro")
    monkeypatch.setattr(tflm, "PARALLEL_SHARE", 40)  # three child processes for 120 images
    assert np.array_equal(model.predict_parallel(images, workers=3), model.predict(images))


def test_arena_is_tflms_record_within_ten_percent_of_an_independent_run():
    measured = arena.measure(INT8)
    smallest = smallest_arena_tflm_accepts(INT8)
    assert smallest <= measured.total_bytes <= 1.1 * smallest, (measured, smallest)
    assert measured.head_bytes + measured.tail_bytes == measured.total_bytes
    assert measured.by_kind["NodeAndRegistration struct"] > 0


def test_parse_record_reads_the_allocator_lines_and_refuses_none():
    text = ("[RecordingMicroAllocator] Arena allocation total 21616 bytes\n"
            "[RecordingMicroAllocator] Arena allocation head 15680 bytes\n"
            "[RecordingMicroAllocator] Arena allocation tail 5936 bytes\n"
            "[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 816 bytes with alignment overhead")
    assert arena.parse_record(text) == {"total_bytes": 21616, "head_bytes": 15680, "tail_bytes": 5936,
                                        "by_kind": {"TfLiteEvalTensor data": 816}}
    with pytest.raises(ValueError):
        arena.parse_record("nothing here")


def test_op_check_agrees_with_tflms_own_interpreter(tmp_path):
    summary = flatbuffer.summarise(INT8)
    assert summary.ops == ("CONV_2D", "MAX_POOL_2D", "ADD", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX")
    assert tflm.unsupported(summary.ops) == []
    broken = patched_op(INT8, tmp_path / "topk.tflite", "SOFTMAX", "TOPK_V2")
    assert tflm.unsupported(flatbuffer.summarise(broken).ops) == ["TOPK_V2"]
    refused = subprocess.run(
        [sys.executable, "-c", "import sys; from tflite_micro.python.tflite_micro import runtime; "
                               "runtime.Interpreter.from_file(sys.argv[1])", str(broken)],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "TOPK_V2" in refused.stderr


def test_micro_json_is_one_document_with_the_measured_arena(exported):
    result = run_cli("micro", str(exported), "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    payload = json.loads(result.stdout)
    measured = arena.measure(INT8).total_bytes
    assert payload["arena_bytes"] == measured
    assert payload["arena_with_margin_bytes"] >= measured * 1.2
    assert payload["flash_bytes"] == INT8.stat().st_size
    assert [op["op"] for op in payload["ops"] if not op["supported"]] == []
    fits = {board["name"]: board["fits"] for board in payload["boards"]}
    assert fits["Arduino Nano 33 BLE Sense"] and not fits["STM32 Blue Pill"]
    assert set(fits) == {board.name for board in report.boards()}


def test_micro_table_names_each_board(runner, exported):
    result = runner.invoke(cli.main, ["micro", str(exported), "--margin", "0"])
    assert result.exit_code == 0, result.output
    for board in report.boards():
        assert board.name in result.output
    assert "says nothing about a microcontroller" in result.output


def test_c_array_compiles_and_holds_the_files_bytes(runner, exported, tmp_path):
    result = runner.invoke(cli.main, ["micro", str(exported), "--c-array", str(tmp_path / "fw")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "fw"
    assert sorted(path.name for path in folder.iterdir()) == ["model_int8.cc", "model_int8.h"]
    subprocess.run(["cc", "-Wall", "-Werror", "-c", "model_int8.cc", "-o", "model.o"], cwd=folder,
                   check=True)
    (folder / "dump.c").write_text(
        '#include <stdio.h>\n#include "model_int8.h"\n'
        "int main(int argc, char** argv) {\n"
        '  FILE* out = fopen(argv[1], "wb");\n'
        "  fwrite(g_model_int8, 1, g_model_int8_len, out);\n  fclose(out);\n"
        '  for (int i = 0; i < MODEL_INT8_NUM_LABELS; i++) printf("%s\\n", g_model_int8_labels[i]);\n'
        '  printf("%d %d %lu\\n", MODEL_INT8_ARENA_BYTES, MODEL_INT8_INPUT_ZERO_POINT,\n'
        "         (unsigned long)((unsigned long)g_model_int8 % 16));\n  return 0;\n}\n")
    subprocess.run(["cc", "-Wall", "-Werror", "dump.c", "model.o", "-o", "dump"], cwd=folder, check=True)
    printed = subprocess.run(["./dump", "copy.tflite"], cwd=folder, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert (folder / "copy.tflite").read_bytes() == INT8.read_bytes()
    assert printed[:-1] == list(runtime.load(INT8).labels)
    arena_bytes, zero_point, misalignment = (int(value) for value in printed[-1].split())
    assert arena_bytes == report.with_margin(arena.measure(INT8).total_bytes, 20.0)
    assert zero_point == -128 and misalignment == 0


def test_c_array_is_staged_a_failure_leaves_the_folder_as_it_was(runner, exported, tmp_path,
                                                                 monkeypatch):
    folder = tmp_path / "fw"
    folder.mkdir()
    (folder / "model_int8.h").write_text("// the firmware's previous header\n")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(c_array, "source_file", fail)  # the last file of the two
    result = runner.invoke(cli.main, ["micro", str(exported), "--c-array", str(folder)])
    assert result.exit_code == 1 and "Error: cannot write the C array" in result.output
    assert [path.name for path in folder.iterdir()] == ["model_int8.h"]
    assert (folder / "model_int8.h").read_text() == "// the firmware's previous header\n"


@pytest.fixture()
def bad_model(request, tmp_path) -> list[str]:
    kind = request.param
    if kind == "float":
        return [str(EXPORTED / "model_fp32.tflite")]
    if kind == "unsupported-op":
        return [str(patched_op(INT8, tmp_path / "topk.tflite", "SOFTMAX", "TOPK_V2"))]
    if kind == "truncated":
        target = tmp_path / "cut.tflite"
        target.write_bytes(INT8.read_bytes()[:-5000])
        return [str(target)]
    return [str(INT8), "--arena-bytes", "16000"]


BAD = {"float": "model_fp32.tflite has a float32 input", "unsupported-op": "uses TOPK_V2",
       "truncated": "is truncated or damaged", "small-arena": "cannot fit model_int8.tflite into"}


@pytest.mark.parametrize("bad_model", list(BAD), ids=list(BAD), indirect=True)
def test_bad_input_is_one_error_line_and_writes_nothing(bad_model, request, tmp_path):
    expected = BAD[request.node.callspec.id]
    result = run_cli("micro", *bad_model, "--c-array", str(tmp_path / "fw"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:") and expected in lines[0], lines
    assert not (tmp_path / "fw").exists() or not any((tmp_path / "fw").iterdir())


def test_verify_golden_holds_a_passing_tflm_row(runner, exported):
    result = runner.invoke(cli.main, ["verify", str(exported), "--golden"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith(f"| {ROW} "))
    assert row.rstrip().endswith("✓  |")
    assert "all 6 artifacts pass parity, with 1 TFLM row" in result.output


def test_tflm_rows_nest_under_the_artifact(exported_copy):
    bars = verify_module.parity.DEFAULT_BARS
    results = verify_module.verify(exported_copy, bars, golden=True, echo=lambda line: None)
    assert [result.file for result in results if result.nested_under] == [ROW]
    manifest = json.loads((exported_copy / "manifest.json").read_text())
    assert [entry["file"] for entry in manifest["artifacts"]] == \
        [entry["file"] for entry in json.loads((EXPORTED / "manifest.json").read_text())["artifacts"]]
    nested = next(e for e in manifest["artifacts"] if e["file"] == INT8.name)["runtimes"]["tflite-micro"]
    assert nested["parity_passed"] and nested["images"] == 300
    assert nested["arena_bytes"] == arena.measure(INT8).total_bytes
    report_json = json.loads((exported_copy / "reports" / "parity.json").read_text())
    assert len(report_json["artifacts"]) == 6
    entry = next(e for e in report_json["artifacts"] if e["file"] == INT8.name)
    assert entry["runtimes"]["tflite-micro"]["passed"]
    assert ROW in (exported_copy / "reports" / "parity.md").read_text()


def test_a_failing_tflm_row_fails_verify(runner, exported):
    # On the golden bundle TFLM's largest probability difference is the largest of the int8 files
    # (LiteRT's 0.080, ONNX Runtime's 0.074): a bar between them fails its row alone.
    result = runner.invoke(cli.main, ["verify", str(exported), "--golden",
                                      "--bar", "int8.max_abs_diff=0.085"])
    assert result.exit_code == 1, result.output
    assert f"Error: parity failed for 1 of 7 artifact(s): {ROW}: max_abs_diff" in result.output


def test_tflm_rows_skipped_with_one_warning_without_the_package(runner, exported, monkeypatch):
    monkeypatch.setattr(tflm, "available", lambda: False)
    result = runner.invoke(cli.main, ["verify", str(exported), "--golden"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if "tflite-micro rows skipped" in line]
    assert len(skipped) == 1 and "pip install 'edgekit[micro]'" in skipped[0]
    assert "Error:" not in result.output and ROW not in result.output


def test_tflm_row_with_an_unsupported_op_is_skipped_not_failed(runner, exported, monkeypatch):
    monkeypatch.setattr(tflm, "supported_ops", lambda: frozenset({"CONV_2D", "ADD"}))
    result = runner.invoke(cli.main, ["verify", str(exported), "--golden"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith(f"warning: {ROW}"))
    assert "MAX_POOL_2D" in warning and "skipped" in warning
    assert "Error:" not in result.output


def test_predict_stderr_is_clean_unless_verbose(tmp_path):
    image = tmp_path / "boot.png"
    shutil.copy(Path(__file__).parent / "data" / "odd" / "boot.webp", tmp_path / "boot.webp")
    for model in ("model_int8.tflite", "model_fp32.onnx"):
        result = run_cli("predict", str(tmp_path / "boot.webp"), "--model", str(EXPORTED / model))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert "Ankle boot" in result.stdout
    verbose = run_cli("predict", str(tmp_path / "boot.webp"), "--verbose")
    assert "XNNPACK delegate" in verbose.stderr
    micro = run_cli("predict", str(tmp_path / "boot.webp"), "--runtime", "tflite-micro")
    assert micro.returncode == 0 and micro.stderr == "" and "Ankle boot" in micro.stdout
    assert not image.exists()


def test_tflm_refuses_other_formats_with_one_error():
    with pytest.raises(errors.ModelError, match="runs int8 .tflite files"):
        runtime.load(EXPORTED / "model_fp32.onnx", runtime="tflite-micro")
