"""One AdamW step on the embedded 135M policy's parameters (random gradients): torch's default on CPU (a loop
over the parameter tensors), foreach, and fused (what `distributed.adamw` builds). Median of 7 steps after the
one that allocates the optimizer state, two rounds per variant, in turns.

    PYTHONPATH=. python experiments/bench_optimizer.py
"""

import statistics
import time

import torch

from prewrite import model_zoo

VARIANTS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    torch.manual_seed(0)
    params = list(model_zoo.load_model("embedded:smollm2-135m-instruct", "float32").parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {sum(p.numel() for p in params)} parameters")  # fmt: skip
    medians: dict[str, list[float]] = {}
    for _ in range(2):
        for name, kwargs in VARIANTS.items():
            opt = torch.optim.AdamW(params, lr=5e-5, **kwargs)
            opt.step()  # allocates the state
            times = []
            for _ in range(7):
                start = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - start)
            medians.setdefault(name, []).append(statistics.median(times))
    for name, values in medians.items():
        print(f"{name}: " + " / ".join(f"{v:.3f} s" for v in values))


if __name__ == "__main__":
    main()
