"""Times each fused GPU kernel against its PyTorch reference at Llama-2-7B shapes: the kernel table of BENCHMARKS.md.

Run on a CUDA machine from the repository root: `PYTHONPATH=src python3 scripts/gpu_kernel_timings.py`. Prints one
row per kernel and shape: forward and forward + backward times (median of 20, ms), peak and held memory (MiB) and the
relative error of the output against the reference. N = 8192 tokens (4 x 2048), d = 4096, V = 32000, 32 heads x 128,
MLP 11008.
"""

import sys
import traceback
from pathlib import Path

import torch
import triton

from tunelab.kernels import reference
from tunelab.kernels.attention import attention
from tunelab.kernels.cross_entropy import linear_cross_entropy
from tunelab.kernels.lora import lora_linear
from tunelab.kernels.rms_norm import rms_norm
from tunelab.kernels.rope import apply_rope
from tunelab.kernels.swiglu import swiglu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cuda_timing import median_ms  # noqa: E402

dev, bf16 = "cuda", torch.bfloat16
torch.manual_seed(0)


def peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def case(make, fn, grads_of):
    """make() -> (args, kwargs, dout); returns fwd, fwd+bwd closures and the first output for comparison."""
    args, kwargs, dout = make()

    def fwd():
        with torch.no_grad():
            return fn(*args, **kwargs)

    def fwd_graph():
        return fn(*args, **kwargs)

    def fwd_bwd():
        for t in grads_of(args):
            t.grad = None
        out = fn(*args, **kwargs)
        outs, douts = (out, dout) if isinstance(out, tuple) else ((out,), (dout,))
        torch.autograd.backward(outs, douts)

    return fwd, fwd_bwd, fwd_graph, kwargs


def saved_mb(fwd_graph):
    """Memory held from the forward to the backward: the output plus what autograd saved."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    out = fwd_graph()
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    del out
    return held / 2**20


def rel(a, b, kwargs):
    """||a - b|| / ||b|| of the first output, over real tokens only when the batch is padded."""
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    if "attention_mask" in kwargs:
        keep = kwargs["attention_mask"][:, :, None, None]
        a, b = a * keep, b * keep
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def leaf(*shape, grad=True, scale=1.0, dtype=bf16):
    return (torch.randn(*shape, device=dev) * scale).to(dtype).requires_grad_(grad)


N, D, V, H, HD, F, B, T = 8192, 4096, 32000, 32, 128, 11008, 4, 2048
angles = torch.randn(B, T, HD, device=dev)
labels = torch.randint(0, V, (N,), device=dev)
labels[::7] = -100
mask = torch.ones(B, T, device=dev, dtype=torch.long)
mask[1:, T - T // 7 :] = 0  # three right-padded rows
cuts = (0, 0.037, 0.134, 0.183, 0.317, 0.366, 0.476, 0.574, 0.61, 0.745, 0.842, 0.916, 1)  # 12 documents
docs = torch.tensor([round(N * c) for c in cuts], dtype=torch.int32)
lora_in = lambda p: (
    (
        leaf(N, D),
        leaf(D, D, grad=False, scale=D**-0.5),
        None,
        leaf(16, D, scale=D**-0.5, dtype=torch.float32),
        leaf(D, 16, dtype=torch.float32),
        2.0,
        p,
        p > 0,
    ),
    {},
    leaf(N, D, grad=False),
)  # noqa: E731

CASES = [
    (
        "rms_norm",
        "8192x4096",
        rms_norm,
        reference.rms_norm,
        lambda: ((leaf(N, D), leaf(D), 1e-6), {}, leaf(N, D, grad=False)),
    ),
    (
        "apply_rope",
        "4x2048x32x128",
        apply_rope,
        reference.apply_rope,
        lambda: (
            (leaf(B, T, H, HD), leaf(B, T, H, HD), angles.cos().to(bf16), angles.sin().to(bf16)),
            {},
            (leaf(B, T, H, HD, grad=False), leaf(B, T, H, HD, grad=False)),
        ),
    ),
    ("swiglu", "8192x11008", swiglu, reference.swiglu, lambda: ((leaf(N, F), leaf(N, F)), {}, leaf(N, F, grad=False))),
    (
        "linear_cross_entropy",
        "W trained",
        linear_cross_entropy,
        reference.linear_cross_entropy,
        lambda: ((leaf(N, D), leaf(V, D, scale=D**-0.5), labels), {}, torch.tensor(1.0, device=dev)),
    ),
    (
        "linear_cross_entropy",
        "W frozen",
        linear_cross_entropy,
        reference.linear_cross_entropy,
        lambda: ((leaf(N, D), leaf(V, D, grad=False, scale=D**-0.5), labels), {}, torch.tensor(1.0, device=dev)),
    ),
    (
        "attention",
        "4x2048 MHA",
        attention,
        reference.attention,
        lambda: ((leaf(B, T, H, HD), leaf(B, T, H, HD), leaf(B, T, H, HD)), {}, leaf(B, T, H, HD, grad=False)),
    ),
    (
        "attention",
        "4x2048 GQA 32/8",
        attention,
        reference.attention,
        lambda: ((leaf(B, T, H, HD), leaf(B, T, 8, HD), leaf(B, T, 8, HD)), {}, leaf(B, T, H, HD, grad=False)),
    ),
    (
        "attention",
        "4x2048 padded",
        attention,
        reference.attention,
        lambda: (
            (leaf(B, T, H, HD), leaf(B, T, H, HD), leaf(B, T, H, HD)),
            {"attention_mask": mask},
            leaf(B, T, H, HD, grad=False) * mask[:, :, None, None],
        ),
    ),
    (
        "attention",
        "1x8192 packed 12 docs",
        attention,
        reference.attention,
        lambda: (
            (leaf(1, N, H, HD), leaf(1, N, H, HD), leaf(1, N, H, HD)),
            {"cu_seqlens": docs.to(dev)},
            leaf(1, N, H, HD, grad=False),
        ),
    ),
    ("lora_linear", "8192x4096 r16", lora_linear, reference.lora_linear, lambda: lora_in(0.0)),
    ("lora_linear", "r16 dropout .05", lora_linear, reference.lora_linear, lambda: lora_in(0.05)),
]

grads_of = lambda args: [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]  # noqa: E731
rows = []
for op, variant, fused, ref, make in CASES:
    try:
        torch.manual_seed(1)
        f_fwd, f_fb, f_graph, kwargs = case(make, fused, grads_of)
        torch.manual_seed(1)
        r_fwd, r_fb, r_graph, _ = case(make, ref, grads_of)
        err = rel(f_fwd(), r_fwd(), kwargs) if "dropout" not in variant else float("nan")
        times = [median_ms(fn) for fn in (r_fwd, f_fwd, r_fb, f_fb)]
        mems = [peak_mb(fn) for fn in (r_fb, f_fb)] + [saved_mb(fn) for fn in (r_graph, f_graph)]
        rows.append((op, variant, *times, times[2] / times[3], *mems, err))
    except Exception:
        traceback.print_exc()
        rows.append((op, variant) + (float("nan"),) * 10)
    torch.cuda.empty_cache()

print(
    f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, bf16; times: median "
    "of 20 (ms); peak: extra memory of fwd+bwd; held: output + saved for backward (MiB)"
)
head = (
    "op",
    "shape",
    "ref fwd",
    "fused fwd",
    "ref f+b",
    "fused f+b",
    "f+b x",
    "ref peak",
    "fused peak",
    "ref held",
    "fused held",
    "rel err",
)
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for r in rows:
    cells = [f"{v:.3f}" for v in r[2:6]] + [f"{r[6]:.2f}"] + [f"{v:.0f}" for v in r[7:11]] + [f"{r[11]:.1e}"]
    print(f"| {r[0]} | {r[1]} | " + " | ".join(cells) + " |")
