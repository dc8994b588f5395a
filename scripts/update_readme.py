"""Fill the generated sections of README.md and docs/ from the reports the main command wrote.

Every number in a generated section comes from a file under exported/ that `scripts/main.sh`
(train -> evaluate -> export -> verify -> benchmark) produced; this script only copies them
between the <!-- BEGIN:name --> and <!-- END:name --> markers of the file that PLACES names
for that section, and rewrites a file only when a section changed (a second run changes
nothing). Usage: python scripts/update_readme.py [EXPORTED_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "toolkit"))

README = ROOT / "README.md"
BENCHMARK_DOC = ROOT / "docs" / "benchmark-method.md"
EDGE_DOC = ROOT / "docs" / "edge-model.md"
QUANTIZATION_DOC = ROOT / "docs" / "quantization.md"
# Which file holds each generated section: the user's guide keeps the released model's results,
# docs/ the benchmark's method and the throughput sweep (a record of measurements).
PLACES: dict[str, Path] = {
    "run": README,
    "accuracy": README,
    "artifacts": README,
    "parity": README,
    "benchmark": README,
    "comparison": EDGE_DOC,
    "explain": README,
    "serve": README,
    "benchmark-method": BENCHMARK_DOC,
    "sweep": BENCHMARK_DOC,
    "layers": README,
}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def human(size: int) -> str:
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.2f} MB"


def accuracy_section(metrics: dict, manifest: dict) -> str:
    reference = manifest.get("reference") or {}
    training = reference.get("training", {})
    lines = [
        f"**Test accuracy: {metrics['accuracy']:.2%}** ({metrics['correct']:,} of "
        f"{metrics['test_images']:,} test images), loss {metrics['loss']:.4f} — "
        f"`{reference.get('architecture', '?')}` CNN, {reference.get('parameters', 0):,} parameters, "
        + kept_weights(training) + ".",
        "",
        "Recall per class (precision and F1: `exported/reports/classification_report.txt`): "
        + ", ".join(f"{label} {scores['recall']:.1%}" for label, scores in metrics["per_class"].items())
        + ".",
        "",
        "![confusion matrix](exported/reports/confusion_matrix.png) "
        "![training curves](exported/reports/training_curves.png)",
    ]
    return "\n".join(lines)


def kept_weights(training: dict) -> str:
    """Which weights the run kept: its best epoch's, or the moving average of its weights."""
    weights = training.get("weights") or {}
    if weights.get("kept") == "average":
        return (f"the moving average of its weights (decay {weights['ema_decay']:g}) after "
                f"{training.get('epochs_run', '?')} epochs, validation accuracy "
                f"{weights['average_validation_accuracy']:.2%} (the plain weights: "
                f"{weights['plain_validation_accuracy']:.2%})")
    return (f"best epoch {training.get('best_epoch', '?')} of {training.get('epochs_run', '?')} "
            f"(validation accuracy {training.get('validation_accuracy', 0):.2%})")


def artifacts_section(manifest: dict) -> str:
    lines = ["| file | format | precision | size | input | accuracy | agreement with Keras |",
             "|---|---|---|---|---|---|---|"]
    reference = manifest.get("reference") or {}
    lines.append(f"| {reference.get('file')} | Keras 3 | fp32 | {human(reference.get('bytes', 0))} "
                 f"| float32 | {reference.get('test_accuracy', 0):.2%} | (reference) |")
    for entry in manifest["artifacts"]:
        metrics = entry.get("metrics") or {}
        tensor = entry["inputs"][0]
        quantization = tensor.get("quantization")
        described = tensor["dtype"] + (f" (scale {quantization['scale']:g}, zero point "
                                       f"{quantization['zero_point']})" if quantization else "")
        accuracy = f"{metrics['accuracy']:.2%}" if "accuracy" in metrics else "—"
        agreement = f"{metrics['agreement']:.2%}" if "agreement" in metrics else "—"
        lines.append(f"| {entry['file']} | {entry['format']} | {entry['precision']} | "
                     f"{human(entry['bytes'])} | {described} | {accuracy} | {agreement} |")
    return "\n".join(lines)


def parity_section(folder: Path) -> str:
    """The first table of parity.md: one row per artifact, measured value beside each bar (the
    `<artifact> @ tflite-micro` rows stay in parity.md and docs/micro.md: the README is at its cap)."""
    lines = (folder / "reports" / "parity.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(line for line in lines[start:end] if " @ " not in line)


def benchmark_section(benchmark: dict) -> str:
    """The README's benchmark: one line of context, the table and the short findings."""
    from edgekit.device import benchmark as benchmark_module

    machine = benchmark["machine"]
    lines = [f"Measured on {machine['cpu']}, {machine['cpus']} CPUs (AVX2 {machine['avx2']}, "
             f"VNNI {machine['vnni']}); float32 matmul rate {benchmark['matmul']['gflops']:.1f} "
             f"GFLOP/s; model {benchmark['macs_per_image']:,} MACs per image; batch "
             f"{benchmark['config']['batch_size']}; latency in ms, throughput in images/s, "
             "`% matmul` = throughput × MACs × 2 / the matmul rate measured around the row. "
             "How each column is measured: [docs/benchmark-method.md](docs/benchmark-method.md).",
             ""]
    # The compared releases' rows are in the comparison section; here, this release's.
    lines += benchmark_module.table({**benchmark, "rows": [
        row for row in benchmark["rows"] if "/" not in row["artifact"]]})
    summary = benchmark_module.load_summary(benchmark)
    if summary:
        lines += ["", summary]
    cold = benchmark.get("predict_cold_start")
    if cold:
        lines += ["", f"`edgekit predict` on one image, a whole new process with the int8 TFLite "
                  f"model (no TensorFlow imported): {cold['median_seconds']:.2f} s wall "
                  f"(median of {len(cold['runs'])})."]
    training = benchmark.get("training")
    if training:
        pipeline = training["pipeline"]
        lines += ["", f"Training ran at {training['epoch_images_per_second_median']:,.0f} images/s "
                  f"per epoch (median of the release run); the augmented input pipeline alone "
                  f"delivers {pipeline['augmented']['images_per_second']:,.0f} images/s "
                  f"({pipeline['plain']['images_per_second']:,.0f} without augmentation), "
                  f"{training['pipeline_headroom']:.0f}x what training consumes: augmentation "
                  "is not the bottleneck."]
    return "\n".join(lines)


def benchmark_method_section(benchmark: dict) -> str:
    """docs/benchmark-method.md: how the release's benchmark measured, with its own settings."""
    from edgekit.device import benchmark as benchmark_module

    machine = benchmark["machine"]
    size = benchmark["matmul"]["size"]
    rates = [row["matmul"]["gflops"] for row in benchmark["rows"] if row.get("matmul")]
    rounds = benchmark["rows"][0]["single"]["rounds"]  # as measured, not today's constant
    return (f"Measured on {machine['cpu']}, {machine['cpus']} CPUs (AVX2 {machine['avx2']}, "
            f"VNNI {machine['vnni']}); float32 matmul rate {benchmark['matmul']['gflops']:.1f} "
            f"GFLOP/s (best of the run; {min(rates):.1f}–{max(rates):.1f} around the rows); "
            f"model {benchmark['macs_per_image']:,} MACs per image; batch "
            f"{benchmark['config']['batch_size']}; latency in ms, throughput in images/s, "
            "% of the matmul rate = throughput × MACs × 2 / rate. Each row's rate "
            "(`matmul GFLOP/s`) is the best of the "
            f"{size}×{size} products (numpy's BLAS, all threads) timed just before and just "
            "after that row's batches, because this machine's speed drifts from second to "
            "second; every measurement starts once the last one's spinning worker threads "
            "have gone quiet. Single-image latency: the models take turns, "
            f"{rounds} rounds of "
            f"{benchmark_module.calls_per_turn(benchmark['config']['single_runs'], rounds)} "
            "timed calls each, every turn after at least "
            f"{benchmark['config'].get('warmup_seconds', 0):.1f} s of warm-up calls (as "
            "TFLite's benchmark_model; after an idle moment the first calls run slower), and "
            "p50/p90/p99 pool a model's turns, so no row rests on one slow or fast stretch. "
            "`× predict` is Keras `model.predict`'s single-image p50 over "
            "the row's; `batch img/s` and `% matmul` use the mean over the timed "
            "seconds, `best img/s` and `best %` the best single batch (the same estimator as "
            "the rate: on this shared machine other tenants' load drags a mean, not a best-of); "
            "`others %` is the share of both CPUs that other processes and other virtual "
            "machines (steal) took while the row was measured, from /proc/stat.")


def sweep_section(sweep: list[dict]) -> str:
    from edgekit.device import benchmark as benchmark_module

    return "\n".join(benchmark_module.sweep_table(sweep)
                     + ["", "int8 against fp32 in this sweep, file by file:", ""]
                     + benchmark_module.int8_summary_lines(sweep))


def comparison_section(folder: Path, benchmark: dict) -> str | None:
    """Edge vs reference: accuracy float and int8, parameters, int8 size, latency (one run)."""
    compared = benchmark.get("compared") or []
    # Shown as the benchmark recorded them (relative to where it ran, the repository for
    # scripts/main.sh), read from beside this release's folder.
    base = folder.resolve().parent
    releases = [(folder, None, shown(folder))] + [
        (Path(item["folder"]) if Path(item["folder"]).is_absolute() else base / item["folder"],
         Path(item["folder"]).name, Path(item["folder"]).as_posix()) for item in compared]
    if len(releases) < 2:
        return None
    rows_by_name = {row["artifact"]: row for row in benchmark["rows"]}
    lines = ["| model | parameters | MACs / image | float test accuracy | int8 TFLite test accuracy "
             "| int8 TFLite size | int8 TFLite latency p50 | fastest file, p50 |",
             "|---|---|---|---|---|---|---|---|"]
    for release, prefix, name in releases:
        manifest = load(release / "manifest.json")
        metrics = load(release / "reports" / "metrics.json")
        if not manifest or not metrics:
            return None
        reference = manifest["reference"]
        int8 = next(entry for entry in manifest["artifacts"] if entry["file"] == "model_int8.tflite")
        own = [row for row in benchmark["rows"] if row["format"] != "keras"
               and (row["artifact"].startswith(f"{prefix}/") if prefix else "/" not in row["artifact"])]
        fastest = min(own, key=lambda row: row["single"]["p50_ms"])
        latency = rows_by_name[f"{prefix}/model_int8.tflite" if prefix else "model_int8.tflite"]
        lines.append(
            f"| `{reference['architecture']}` ({name}) | {reference['parameters']:,} | "
            f"{reference['macs_per_image']:,} | {metrics['accuracy']:.2%} | "
            f"{int8['metrics']['accuracy']:.2%} | {human(int8['bytes'])} | "
            f"{latency['single']['p50_ms']:.3f} ms | {fastest['artifact'].split('/')[-1]} "
            f"{fastest['single']['p50_ms']:.3f} ms |")
    from edgekit.device import benchmark as benchmark_module

    paired = benchmark_module.paired_table(benchmark)
    if paired:
        lines += ["", "Single-image latency with the two releases' same-named files timed call by "
                  "call in turn (the fairest comparison on a shared machine; same run):", ""]
        lines += paired
    return "\n".join(lines)


def explain_section(report: dict) -> str:
    """Explanation parity (verify --explanations): each artifact's mean rank correlation, the
    maps' deletion/insertion scores against random, and the sanity checks."""
    names = {"model_int8.tflite": "int8 TFLite", "model_int8.onnx": "int8 ONNX",
             "model_fp32.tflite": "fp32 TFLite", "model_fp32.onnx": "fp32 ONNX",
             "model_fp16.tflite": "fp16", "model_dynamic.tflite": "dynamic"}
    measured = ", ".join(
        f"{entry['measures']['mean_rank_correlation']:.3f} {names.get(entry['file'], entry['file'])}"
        for entry in report["artifacts"] if entry.get("measures"))
    bars = " / ".join(f"{bar['min_rank_correlation']:g} {precision}"
                      for precision, bar in report["bars"].items())
    artifacts_passed = all(entry.get("passed") for entry in report["artifacts"])
    text = (f"On {report['measured_on']}: mean rank correlation with the Keras model's maps "
            f"{measured} (bars {bars}): "
            + ("every artifact passed." if artifacts_passed else "**an artifact failed**."))
    text += faithfulness_sentence(report)
    sanity = report.get("sanity") or {}
    randomised = sanity.get("randomised_weights")
    if randomised:
        values = ", ".join(f"{name.removesuffix('_rank_correlation')} {check['value']:.3f}"
                           for name, check in randomised.items() if isinstance(check, dict))
        text += (f" Randomised weights change every map (rank correlation with the trained "
                 f"model's: {values}; below 0.5): "
                 + ("passed." if randomised["passed"] else "**failed**."))
    return text


TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM",
          "occlusion": "occlusion"}


def faithfulness_sentence(report: dict) -> str:
    """Deletion/insertion AUCs of the default map, Grad-CAM and occlusion beside random's."""
    scored = report.get("faithfulness") or {}
    if "deletion" not in report or not scored.get("default_method"):
        return ""
    default = scored["default_method"]
    parts = []
    for fill in report["deletion"]:
        random = report["random"][fill]
        cells = ", ".join(
            f"{TITLES.get(method, method)} {report['deletion'][fill][method]['auc']:.3f}/"
            f"{report['insertion'][fill][method]['auc']:.3f}"
            for method in dict.fromkeys([default, "gradcam", "occlusion"])
            if method in report["deletion"][fill])
        parts.append(f"{fill} fill: {cells}, random {random['deletion']['auc']:.3f}/"
                     f"{random['insertion']['auc']:.3f}")
    check = scored.get("check") or {}
    return (f" Faithfulness (deletion/insertion AUC through {scored['scored_on']}, lower/higher "
            f"is better; random: a random order of patch-sized blocks): " + "; ".join(parts)
            + f". {TITLES.get(default, default)}, the default map, beats random by more than two "
            "standard errors for each fill: " + ("passed." if check.get("passed") else "**failed**."))


def serve_section(report: dict, cpus: int | None) -> str:
    """edgekit serve against the FastAPI wrapper a user would write (edgekit serve --benchmark)."""
    rows = report["rows"]

    def rate(server: str, clients: int) -> dict:
        return next(row for row in rows if row["server"] == server and row["clients"] == clients)

    most = max(row["clients"] for row in rows)
    ours, theirs = rate("edgekit serve", most), rate("FastAPI wrapper", most)
    alone, alone_theirs = rate("edgekit serve", 1), rate("FastAPI wrapper", 1)
    return (f"`edgekit serve --benchmark` on {cpus or '?'} CPUs ({report['precision']}, "
            f"{report['model']}; one process each, taking turns): with {most} keep-alive clients "
            f"edgekit serve answers {ours['requests_per_second']:,.0f} requests/s, "
            f"{ours['requests_per_second'] / theirs['requests_per_second']:.2f}x the "
            f"{theirs['requests_per_second']:,.0f} of the FastAPI wrapper a user would write "
            f"(p99 {ours['p99_ms']:.1f} ms against {theirs['p99_ms']:.1f}); with 1 client "
            f"{alone['requests_per_second']:,.0f} against {alone_theirs['requests_per_second']:,.0f} "
            "([docs/serve.md](docs/serve.md), `exported/reports/serve_benchmark.json`).")


def shown(folder: Path) -> str:
    """A release folder as the README names it: relative to the repository when inside it."""
    resolved = folder.resolve()
    return resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else folder.as_posix()


def run_section(run: dict) -> str:
    minutes = run["wall_seconds"] / 60
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in run["steps_seconds"].items())
    return (f"Last full run of `scripts/main.sh` on this {run['cpus']}-CPU machine ({run['machine']}, "
            f"Python {run['python']}): **{run['wall_seconds']:.0f} s ({minutes:.1f} min) wall** — "
            f"{steps} (recorded in `exported/reports/main_run.json`)."
            + adopted_note(run))


def adopted_note(run: dict) -> str:
    adopted = run.get("adopted_run")
    if not adopted:
        return ""
    return (f" The train step adopted a finished `edgekit train` run (`EDGEKIT_FROM_RUN="
            f"{adopted['folder']}`) whose training took {adopted['train_seconds']:.0f} s "
            f"({adopted['train_seconds'] / 60:.1f} min), recorded in `exported/train_config.json`.")


def layers_section(report: dict) -> str:
    """The released model's diagnosis (reports/layers.json): its three worst layers per artifact."""
    lines = [f"On {report['images']} {report['split']} images (`edgekit verify exported --layers`); "
             "score = max(introduced, local) mean per-channel noise-to-signal ratio, final = "
             "accumulated SQNR of the output.", "",
             "| artifact | worst layer (score) | 2nd | 3rd | final SQNR dB |",
             "|---|---|---|---|---|"]
    for artifact in report["artifacts"]:
        ranked = artifact["ranked"]
        cells = [f"{' + '.join(row.get('group') or [row['layer']])} ({row['score']:.1e})"
                 for row in ranked[:3]]
        last = next(row for row in ranked if row["layer"] == artifact["order"][-1])
        lines.append(f"| {artifact['file']} | {' | '.join(cells)} | {last['sqnr_db']:.1f} |")
    return "\n".join(lines)


def replace(text: str, name: str, body: str, where: str = "README") -> str:
    # The section may be empty (markers on consecutive lines) until first filled.
    pattern = re.compile(rf"(<!-- BEGIN:{name} -->\n)(?:.*?\n)?(<!-- END:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{where} has no {name} markers")
    return pattern.sub(lambda match: match.group(1) + body + "\n" + match.group(2), text)


def sections(folder: Path) -> dict[str, str]:
    """Every generated section that the reports in ``folder`` provide, by marker name."""
    manifest = load(folder / "manifest.json")
    metrics = load(folder / "reports" / "metrics.json")
    benchmark = load(folder / "reports" / "benchmark.json")
    run = load(folder / "reports" / "main_run.json")
    bodies: dict[str, str] = {}
    if metrics and manifest:
        bodies["accuracy"] = accuracy_section(metrics, manifest)
    if manifest:
        bodies["artifacts"] = artifacts_section(manifest)
    if (folder / "reports" / "parity.md").is_file():
        bodies["parity"] = parity_section(folder)
    if benchmark:
        bodies["benchmark"] = benchmark_section(benchmark)
        bodies["benchmark-method"] = benchmark_method_section(benchmark)
        comparison = comparison_section(folder, benchmark)
        if comparison:
            bodies["comparison"] = comparison
        if benchmark.get("sweep"):
            bodies["sweep"] = sweep_section(benchmark["sweep"])
    if run:
        bodies["run"] = run_section(run)
    explain = load(folder / "reports" / "explain.json")
    if explain:
        bodies["explain"] = explain_section(explain)
    layers = load(folder / "reports" / "layers.json")
    if layers:
        bodies["layers"] = layers_section(layers)
    serve = load(folder / "reports" / "serve_benchmark.json")
    if serve:
        bodies["serve"] = serve_section(serve, (benchmark or {}).get("machine", {}).get("cpus"))
    return bodies


def fill(path: Path, bodies: dict[str, str]) -> bool:
    """Write ``bodies`` between their markers in ``path``; True if the file changed."""
    text = path.read_text()
    where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    updated = text
    for name, body in bodies.items():
        updated = replace(updated, name, body, where)
    if updated == text:
        return False
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(updated)
    temporary.replace(path)
    return True


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "exported"
    bodies = sections(folder)
    for path in dict.fromkeys(PLACES.values()):
        changed = fill(path, {name: body for name, body in bodies.items() if PLACES[name] == path})
        print(f"{'updated' if changed else 'unchanged'} {path}")


if __name__ == "__main__":
    main()
