"""Training throughput of the trainer's architectures on the CPU, in images per second.

Runs full training steps (augmentation, forward, weighted loss, backward, AdamW) of
``EmotionModule`` on generated FER2013-shaped batches, after warm-up steps, and prints
one line per architecture. Usage:

    python bench/trainer_throughput.py --steps 20 --batch-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from trainer.module import EmotionModule
from trainer.synthetic import make_images

WARMUP_STEPS = 3


def measure(architecture: str, input_size: int, batch_size: int, steps: int) -> float:
    """Return images per second over ``steps`` training steps."""
    module = EmotionModule(architecture=architecture, input_size=input_size)
    module.train()
    images = make_images(batch_size, seed=0, size_px=input_size)
    batch = torch.from_numpy(images.images).unsqueeze(1)
    labels = torch.from_numpy(images.labels)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        logits = module.model.logits(module.to_model_input(batch, train=True))
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per architecture")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {options.threads} threads, batch {options.batch_size}")
    for architecture, input_size in (("ds_cnn", 48), ("mini_xception", 48), ("mini_xception", 64)):
        rate = measure(architecture, input_size, options.batch_size, options.steps)
        print(f"{architecture:14s} {input_size}x{input_size}: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
