"""Generate the corpus of broken and odd inputs under tests/data/ (small files, committed).

Run with the workstation install: python scripts/make_bad_inputs.py
Broken inputs must each produce one `Error:` line; odd-but-valid images must be labelled.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data"
EXPORTED = ROOT / "exported"


def boot() -> np.ndarray:
    """Test image 0 (an ankle boot), from the stored golden bundle."""
    with np.load(EXPORTED / "golden.npz") as bundle:
        index = int(np.flatnonzero(bundle["indices"] == 0)[0])
        return bundle["images"][index, :, :, 0]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A valid-looking PNG header that declares 40000 x 40000 pixels."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    data[8:33] = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def broken_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(boot()).resize((200, 200))
    good = png_bytes(picture)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "not-an-image.png").write_text("this is a text file with a .png name\n")
    (folder / "bomb.png").write_bytes(bomb())
    jpeg = io.BytesIO()
    picture.convert("RGB").save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    (folder / "random.gif").write_bytes(np.random.default_rng(1).bytes(512))
    bad_crc = bytearray(good)
    bad_crc[40] ^= 0xFF  # inside the first chunk: its CRC no longer matches
    (folder / "bad-crc.png").write_bytes(bytes(bad_crc))
    (folder / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
    gif = io.BytesIO()
    picture.save(gif, format="GIF")
    (folder / "truncated.gif").write_bytes(gif.getvalue()[:60])
    # A JPEG whose frame header declares 65000 x 65000 pixels (4.2 gigapixels).
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="JPEG")
    header = bytearray(small.getvalue())
    frame = header.find(b"\xff\xc0")
    header[frame + 5:frame + 9] = struct.pack(">HH", 65000, 65000)
    (folder / "bomb.jpg").write_bytes(bytes(header))


def odd_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    grey = Image.fromarray(boot())
    big = grey.resize((112, 112), Image.Resampling.BICUBIC)
    white = Image.fromarray(255 - np.asarray(big))
    Image.fromarray(np.asarray(big).astype(np.uint16) * 257).save(folder / "sixteen-bit.png")
    Image.merge("RGBA", [*white.convert("RGB").split(), big]).save(folder / "rgba.png")
    big.convert("P").save(folder / "palette.png")
    big.convert("RGB").convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    big.save(folder / "animated.gif", save_all=True,
             append_images=[Image.new("L", big.size, 255)], duration=50)
    grey.resize((1, 1)).save(folder / "one-pixel.png")
    Image.fromarray(np.pad(np.asarray(big), ((0, 0), (400, 400)))).save(folder / "very wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; EXIF says turn it back
    big.rotate(90, expand=True).convert("RGB").save(folder / "exif-rotated.jpg", exif=exif.tobytes(),
                                                     quality=95)
    white.save(folder / "white background.png")
    big.save(folder / "bööt ünïcode.png")
    big.convert("RGB").save(folder / "colour.bmp")
    Image.fromarray(np.asarray(big).astype(np.float32) / 255.0).save(folder / "float32.tif")
    big.convert("1").save(folder / "one-bit.png")
    Image.merge("LA", [big, Image.new("L", big.size, 255)]).save(folder / "grey-alpha.png")
    Image.fromarray(np.asarray(big)).save(folder / "multipage.tif", save_all=True,
                                          append_images=[Image.fromarray(np.asarray(white))])
    big.convert("RGB").save(folder / "boot.webp", quality=90)


def broken_models(folder: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    onnx_bytes = (EXPORTED / "model_fp32.onnx").read_bytes()
    tflite_bytes = (EXPORTED / "model_int8.tflite").read_bytes()
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "empty.tflite").write_bytes(b"")
    (folder / "truncated.onnx").write_bytes(onnx_bytes[:4096])
    (folder / "truncated.tflite").write_bytes(tflite_bytes[:4096])
    (folder / "random.onnx").write_bytes(np.random.default_rng(2).bytes(4096))
    (folder / "random.tflite").write_bytes(np.random.default_rng(3).bytes(4096))
    (folder / "onnx-named.tflite").write_bytes(onnx_bytes[:50_000])
    (folder / "tflite-named.onnx").write_bytes(tflite_bytes[:50_000])

    def linear(name: str, side: int, classes: int, external: str | None = None,
               input_type: int = TensorProto.FLOAT, fill: float = 0.0, extra_input: bool = False,
               op: str = "Softmax", opset: int = 17) -> None:
        pixels = helper.make_tensor_value_info("pixels", input_type, [None, side, side, 1])
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes])
        weights = numpy_helper.from_array(np.full((side * side, classes), fill, np.float32), "W")
        shape = numpy_helper.from_array(np.array([-1, side * side], np.int64), "shape")
        if external is not None:
            weights.ClearField("raw_data")
            weights.data_location = TensorProto.EXTERNAL
            for key, value in (("location", external), ("offset", "0"),
                               ("length", str(side * side * classes * 4))):
                entry = weights.external_data.add()
                entry.key, entry.value = key, value
        nodes = [helper.make_node("Cast", ["pixels"], ["floats"], to=TensorProto.FLOAT),
                 helper.make_node("Reshape", ["floats", "shape"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "W"], ["logits"]),
                 helper.make_node(op, ["logits"], ["probabilities"],
                                  domain="" if op == "Softmax" else "com.example")]
        inputs = [pixels] + ([helper.make_tensor_value_info("extra", TensorProto.FLOAT, [None, 3])]
                             if extra_input else [])
        graph = helper.make_graph(nodes, name, inputs, [output], [weights, shape])
        domains = [helper.make_opsetid("", opset)] + (
            [] if op == "Softmax" else [helper.make_opsetid("com.example", 1)])
        model = helper.make_model(graph, opset_imports=domains)
        (folder / f"{name}.onnx").write_bytes(model.SerializeToString())

    linear("wrong-input-shape", 32, 10)
    linear("five-classes", 28, 5)
    linear("external-data-outside", 28, 10, external="../../../../../etc/passwd")
    linear("int32-input", 28, 10, input_type=TensorProto.INT32)
    linear("two-inputs", 28, 10, extra_input=True)
    linear("nan-weights", 28, 10, fill=float("nan"))
    linear("unknown-operator", 28, 10, op="FooBar")
    linear("opset-99", 28, 10, opset=99)
    (folder / "no-extension").write_bytes(tflite_bytes)
    flipped = bytearray(tflite_bytes)
    flipped[1000::997] = bytes(value ^ 0x5A for value in flipped[1000::997])
    (folder / "bit-flipped.tflite").write_bytes(bytes(flipped))
    (folder / "gzipped.onnx").write_bytes(gzip.compress(onnx_bytes[:20_000], mtime=0))
    keras_models(folder)


def keras_models(folder: Path) -> None:
    """Valid TFLite models that break the contract (needs TensorFlow, as export does)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)

    def tflite(name: str, side: int, classes: int) -> None:
        inputs = keras.Input((side, side, 1))
        outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs))
        converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
        (folder / f"{name}.tflite").write_bytes(converter.convert())

    tflite("wrong-input-shape", 32, 10)
    tflite("five-classes", 28, 5)


def main() -> None:
    broken_images(OUT / "bad" / "images")
    odd_images(OUT / "odd")
    broken_models(OUT / "bad" / "models")
    total = sum(path.stat().st_size for path in OUT.rglob("*") if path.is_file())
    print(f"wrote {sum(1 for p in OUT.rglob('*') if p.is_file())} files, {total / 1024:.0f} KB, "
          f"under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
