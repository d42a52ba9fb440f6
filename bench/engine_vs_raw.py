"""Training-loop throughput of the rnnlab engine against a minimal hand-written PyTorch loop.

Both train the same LSTM (hidden 64 by default) on the same synthetic windows with the same batch
size, optimizer (Adam), loss (MSE), gradient clipping (1.0) and one validation pass per epoch, in
one process. Epochs alternate: the raw loop runs one epoch inside the engine's ``on_epoch``
callback (callback time is outside the engine's clock), so each engine epoch is paired with a raw
epoch run right next to it, and rounds alternate which side goes first. This pairing keeps the
ratio honest when other processes share the cores. The engine's time is its own per-epoch clock
(``EpochReport.seconds``, which sums to ``EngineResult.train_seconds``: no data preparation,
evaluation or attribution); the raw loop times its own epochs.

The last line printed is ``engine/raw throughput ratio: X.XX``, the median over epoch pairs.

    python bench/engine_vs_raw.py                        # CPU, the sizes of issue 3
    python bench/engine_vs_raw.py --device cuda --batch 64                      # the graph path: goal >= 5
    python bench/engine_vs_raw.py --device cuda --batch 1024 --windows 100000   # goal >= 1.5
    python bench/engine_vs_raw.py --device cuda --batch 64 --cuda-graphs off    # eager, as before (~0.95)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.engine import EpochReport, JobSpec, train_and_evaluate  # noqa: E402


class RawLSTM(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


class RawLoop:
    """A minimal loop: data on the device, index-sliced batches, one validation pass per epoch."""

    def __init__(self, tensors: dict[str, torch.Tensor], hidden: int, batch: int) -> None:
        self.t = tensors
        self.batch = batch
        self.model = RawLSTM(tensors["x_train"].shape[2], hidden).to(tensors["x_train"].device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.MSELoss()

    def epoch(self) -> float:
        """Seconds for one epoch."""
        t, model = self.t, self.model
        n = t["x_train"].shape[0]
        started = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=t["x_train"].device)
        for start in range(0, n, self.batch):
            idx = perm[start : start + self.batch]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(model(t["x_train"][idx]), t["y_train"][idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            self.optimizer.step()
        model.eval()
        with torch.no_grad():
            self.loss_fn(model(t["x_val"]), t["y_val"]).item()  # syncs, like reading the val loss
        return time.perf_counter() - started


def engine_spec(args: argparse.Namespace, epochs: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset_id": "bench",
            "task": "regression",
            "data": {"layout": "arrays", "target": "y", "split": {"method": "column"}, "scaling": "none"},
            "model": {"cell": "lstm", "hidden_size": args.hidden},
            "training": {
                "epochs": epochs,
                "batch_size": args.batch,
                "early_stopping_patience": None,
                "cuda_graphs": args.cuda_graphs,
            },
            "evaluation": {"bootstrap_samples": 0, "attribution": False},
            "device": args.device,
        }
    )


def paired_round(
    arrays: dict[str, np.ndarray], tensors: dict[str, torch.Tensor], args: argparse.Namespace, raw_first: bool
) -> tuple[list[float], list[float], float]:
    """Engine and raw epoch seconds, epoch by epoch, and the engine's train_seconds."""
    torch.manual_seed(0)
    raw = RawLoop(tensors, args.hidden, args.batch)
    raw_seconds: list[float] = [raw.epoch()] if raw_first else []
    engine_seconds: list[float] = []

    def on_epoch(report: EpochReport) -> None:
        engine_seconds.append(report.seconds)
        if not raw_first or report.epoch < report.epochs:
            raw_seconds.append(raw.epoch())

    result = train_and_evaluate(engine_spec(args, args.epochs), arrays, on_epoch=on_epoch)
    return engine_seconds, raw_seconds, result.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both)")
    parser.add_argument(
        "--cuda-graphs",
        default="auto",
        choices=["auto", "off"],
        help="the engine's training.cuda_graphs: on CUDA, auto replays each full batch's step from a CUDA graph",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.windows, args.steps, args.features)).astype(np.float32)
    y = (x[:, -5:, 0].mean(axis=1) + 0.1 * rng.standard_normal(args.windows)).astype(np.float32)
    # Fixed parts so both sides train on the same windows: 80% train, 10% val, 10% test.
    n_train, n_val = int(args.windows * 0.8), int(args.windows * 0.1)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (args.windows - n_train - n_val))
    arrays = {"X": x, "y": y, "split": split}
    device = torch.device(args.device)
    tensors = {
        "x_train": torch.from_numpy(x[:n_train]).to(device).contiguous(),
        "y_train": torch.from_numpy(y[:n_train, None]).to(device),
        "x_val": torch.from_numpy(x[n_train : n_train + n_val]).to(device).contiguous(),
        "y_val": torch.from_numpy(y[n_train : n_train + n_val, None]).to(device),
    }
    print(
        f"LSTM hidden {args.hidden}, {args.windows} windows x {args.steps} steps x {args.features} features "
        f"({n_train} train, {n_val} val), batch {args.batch}, {args.epochs} epochs x {args.rounds} rounds, "
        f"device {args.device}, {args.threads} threads, torch {torch.__version__}"
    )
    if args.device == "cuda":
        graphed = args.cuda_graphs == "auto"
        print(f"engine training step: {'CUDA graph (captured once, replayed per batch)' if graphed else 'eager'}")
    # Warm up both paths (allocator, kernels) on a small slice before timing.
    small = {"X": x[:640], "y": y[:640], "split": np.array(["train"] * 512 + ["val"] * 64 + ["test"] * 64)}
    small_tensors = {k: v[:512] if "train" in k else v[:64] for k, v in tensors.items()}
    paired_round(small, small_tensors, argparse.Namespace(**{**vars(args), "epochs": 1}), raw_first=False)

    ratios: list[float] = []
    engine_total = raw_total = 0.0
    for round_index in range(args.rounds):
        engine_s, raw_s, train_seconds = paired_round(arrays, tensors, args, raw_first=round_index % 2 == 1)
        engine_total += train_seconds
        raw_total += sum(raw_s)
        # Same number of samples per epoch on both sides, so the throughput ratio is raw time / engine time.
        ratios += [r / e for e, r in zip(engine_s, raw_s, strict=True)]
        print(
            f"round {round_index + 1}: engine {n_train * len(engine_s) / train_seconds:8.1f} samples/s, "
            f"raw {n_train * len(raw_s) / sum(raw_s):8.1f} samples/s"
        )
    samples = n_train * args.epochs * args.rounds
    print(f"overall: engine {samples / engine_total:.1f} samples/s, raw {samples / raw_total:.1f} samples/s")
    print(f"engine/raw throughput ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
