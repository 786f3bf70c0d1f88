"""What does head pruning's ``PrunedMultiheadAttention`` cost against torch's fused attention paths?

    python benchmarks/pruned_attention_speed.py [--threads 2] [--repeat 15]

``nn.MultiheadAttention`` cannot express fewer heads, so head pruning swaps in ``PrunedMultiheadAttention``
(SDPA + two linears), which ``nn.TransformerEncoderLayer``'s fused fast path does not take. To isolate that
cost, each case compares the dense module with the same module converted to ``PrunedMultiheadAttention``
keeping all heads (identical MACs and outputs): a ratio above 1 is what skipping the fused path costs.
ViT-B/16 shapes (197 tokens, width 768, 12 heads), random weights, eval mode, steady-state blocks.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from nbopt.pruning.heads import PrunedMultiheadAttention
from nbopt.timing import compare


def cases() -> dict[str, tuple[nn.Module, nn.Module, callable]]:
    """name -> (dense module, the same with PrunedMultiheadAttention keeping every head, how to call it)."""
    mha = nn.MultiheadAttention(768, 12, batch_first=True).eval()
    layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True).eval()
    layer_swapped = copy.deepcopy(layer)
    layer_swapped.self_attn = PrunedMultiheadAttention(layer.self_attn, torch.arange(12)).eval()
    return {
        "MultiheadAttention(x, x, x, need_weights=False) (as in torchvision's ViT)":
            (mha, PrunedMultiheadAttention(mha, torch.arange(12)).eval(), lambda m, x: m(x, x, x, need_weights=False)[0]),
        "TransformerEncoderLayer (fused encoder fast path)": (layer, layer_swapped, lambda m, x: m(x)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 197 tokens x 768, 12 heads")
    print("| module | batch | torch (fused path) ms | PrunedMultiheadAttention, all heads ms | ratio | max |diff| |")
    print("|---|---|---|---|---|---|")
    for name, (dense, swapped, call) in cases().items():
        for b in (1, 8):
            x = torch.randn(b, 197, 768)
            with torch.no_grad():
                diff = float((call(dense, x) - call(swapped, x)).abs().max())
                t = compare({"dense": lambda: call(dense, x), "swapped": lambda: call(swapped, x)},
                            warmup=3, repeat=args.repeat, block=3, settle_ms=50)
            d, s = t["dense"].median_ms, t["swapped"].median_ms
            print(f"| {name} | {b} | {d:.2f} | {s:.2f} | {s / d:.2f} | {diff:.1e} |", flush=True)
            assert diff < 1e-4, "PrunedMultiheadAttention keeping every head must compute the same outputs"


if __name__ == "__main__":
    main()
