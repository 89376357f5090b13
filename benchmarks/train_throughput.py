"""Training throughput of the default model in fp32 and under bf16 autocast, side by side in one run.

    python benchmarks/train_throughput.py                 # default model, batch 8 at 256x256
    python benchmarks/train_throughput.py --tiny          # a seconds-long version (CI)

Each precision runs ``--warmup`` untimed training steps (forward, fp32 loss, backward, Adam) and then
``--steps`` timed ones on the same random batch, channels-last as ``breastus-train train`` runs them;
the precisions alternate round by round so that a busy machine slows both alike. Prints images/s per
precision and, last, ``bf16/fp32 speed-up: X.XX`` (median round times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from BreastUSSegmentLib.model import AttentionUNet, ModelConfig, count_parameters
from breastus_training.precision import autocast, cpu_has_native_bf16


def step_seconds(model: nn.Module, optimizer, images, masks, precision: str) -> float:
    """Seconds of one training step."""
    loss_fn = nn.BCEWithLogitsLoss()
    started = time.perf_counter()
    with autocast(images.device, precision):
        logits = model(images).logits
    loss = loss_fn(logits.float(), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small model and input: a quick check that it runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    config = ModelConfig()
    if args.tiny:
        config, args.size, args.batch_size, args.steps, args.warmup = ModelConfig(base_channels=4, depth=3), 64, 2, 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(args.batch_size, 1, args.size, args.size) > 0.8).float()
    precisions = ["fp32", "bf16"]
    models = {}
    for precision in precisions:
        torch.manual_seed(0)
        model = AttentionUNet(config).to(memory_format=torch.channels_last).train()
        models[precision] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
    print(f"model {config} ({count_parameters(models['fp32'][0]):,} parameters), batch {args.batch_size} at "
          f"{args.size}x{args.size}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}")
    times = {precision: [] for precision in precisions}
    for round_number in range(args.warmup + args.steps):
        for precision in precisions:
            seconds = step_seconds(*models[precision], images, masks, precision)
            if round_number >= args.warmup:
                times[precision].append(seconds)
    for precision in precisions:
        median = statistics.median(times[precision])
        print(f"{precision}: {args.batch_size / median:.2f} images/s (median step {median:.3f} s over "
              f"{len(times[precision])} steps)")
    print(f"bf16/fp32 speed-up: {statistics.median(times['fp32']) / statistics.median(times['bf16']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
