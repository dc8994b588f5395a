"""Training images/s of the edge recipe at several batch sizes, measured in turns in one process.

Each batch size gets its own model and pipeline (edgekit train's loop, augmentation on); then
epochs of a slice run in rounds, one per batch size per round, so that the machine's drift
(a shared 2-CPU machine's speed changes from minute to minute) falls on every setting alike.
Prints one line per epoch and the median per batch size.

    python scripts/epoch_throughput.py [--images 15000] [--rounds 3] [--batch-sizes 128,256,512]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="128,256,512")
    arguments = parser.parse_args()

    from edgekit.device import datasets
    from edgekit.workstation import distribute, models, training
    from edgekit.workstation.config import TrainConfig

    dataset = training.open_data(datasets.DataSpec(), TrainConfig())
    split = dataset.train.head(arguments.images)
    distribution = distribute.start("default")
    loops = {}
    for batch in (int(size) for size in arguments.batch_sizes.split(",")):
        config = TrainConfig.for_architecture("edge", batch_size=batch)
        model = models.build(config, dataset.contract)
        training.compile_model(model, config, steps_per_epoch=len(split) // batch)
        loop = distribute.Loop(distribution, model, config.label_smoothing, batch, config.ema_decay)
        pipeline = functools.partial(training.make_dataset, config=config, num_classes=10,
                                     training=True)
        data = loop.distribute(split, pipeline, training=True)
        loop.train_epoch(data)  # trace the step and fill the pipeline's buffers
        loops[batch] = (loop, data)
    rates: dict[int, list[float]] = {batch: [] for batch in loops}
    for round_ in range(arguments.rounds):
        for batch, (loop, data) in loops.items():
            started = time.perf_counter()
            loop.train_epoch(data)
            rates[batch].append(len(split) / (time.perf_counter() - started))
            print(f"round {round_ + 1}: batch {batch}: {rates[batch][-1]:,.0f} images/s", flush=True)
    for batch, values in rates.items():
        print(f"batch {batch}: median {statistics.median(values):,.0f} images/s "
              f"(range {min(values):,.0f}-{max(values):,.0f})")


if __name__ == "__main__":
    main()
