"""NF4 (QLoRA base) check on a CUDA machine, as one device call from the repository root:

    python3 scripts/gpu_nf4_check.py            # carry .pk (bitsandbytes) and, if the image lacks pytest, .whl_nf4

1. Unpacks bitsandbytes from .pk/sites.tar.xz (into .site/) for the comparisons, and pytest from .whl_nf4/*.whl when
   the image has none.
2. Runs tests/kernels/test_nf4.py and tests/peft/test_quant.py on the GPU (bit-identity with bitsandbytes included).
3. Times, on a 4096 x 11008 weight: the dequantization kernel (GB/s against the bytes it must move, several launch
   shapes) beside a device copy of as many bytes and bitsandbytes' dequantize_4bit; quantization, ours and theirs;
   and counts bytes that differ from bitsandbytes with the approximate and the exact reciprocal.
4. Times one forward + backward of nf4_lora_linear against bf16 lora_linear at x (8192 x 4096), W (11008 x 4096),
   r = 16, and the memory each holds for its backward.
5. Builds a random Llama-2-7B in NF4 from the meta device (materialize_quantized_) and reports memory and time.

Results go to stdout and, when $OUT is set, to $OUT/nf4_check.json and $OUT/pytest_nf4.log. Exit status: pytest's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".site"
OUT = Path(os.environ["OUT"]) if os.environ.get("OUT") else None


def setup() -> dict[str, str]:
    """Make bitsandbytes (and pytest, if missing) importable here and in the pytest subprocess."""
    bundle = ROOT / ".pk" / "sites.tar.xz"
    if not (SITE / "bitsandbytes").exists() and bundle.exists():
        with tarfile.open(bundle) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(".site/bitsandbytes")]
            tar.extractall(ROOT, members=members, filter="data")
    paths = [str(ROOT / "src"), str(SITE)]
    try:
        import pytest  # noqa: F401
    except ImportError:
        wheels = sorted((ROOT / ".whl_nf4").glob("*.whl"))
        target = "/tmp/nf4_site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", target, *map(str, wheels)], check=True)  # fmt: skip
        paths.append(target)
    for p in reversed(paths):
        sys.path.insert(0, p)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]), PYTHONUNBUFFERED="1")
    return env


def run_tests(env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "--tb=short", "--durations=8",
           "tests/kernels/test_nf4.py", "tests/peft/test_quant.py"]  # fmt: skip
    log_path = (OUT or Path("/tmp")) / "pytest_nf4.log"
    with log_path.open("w") as log:  # written as it runs: a run cut short still leaves its log
        status = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    print("\n".join(log_path.read_text().splitlines()[-45:]), flush=True)
    return status


def median_ms(fn, iters: int = 30, warmup: int = 5) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_kernels(results: dict) -> None:
    import torch
    import triton

    from tunelab.kernels.nf4 import dequantize_nf4_triton, quantize_nf4_triton

    bnb = _bnb()
    torch.manual_seed(0)
    shape = (11008, 4096)  # (out, in) of Llama-2-7B's gate/up projection: 45.1M weights
    n = shape[0] * shape[1]
    w = (torch.randn(shape, device="cuda") * 0.02).to(torch.bfloat16)
    q = quantize_nf4_triton(w)
    moved = n / 2 + 2 * n + q.absmax_q.numel() + 4 * q.absmax2.numel()  # bytes read + written
    out = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    rows = []
    for blocks in (16, 32, 64, 128):
        for warps in (2, 4, 8):
            ms = median_ms(lambda: dequantize_nf4_triton(q, out=out, blocks_per_program=blocks, num_warps=warps))
            rows.append({"blocks_per_program": blocks, "num_warps": warps, "ms": round(ms, 4),
                         "GB_s": round(moved / ms / 1e6, 1)})  # fmt: skip
    flat = _flat_kernel()
    for block in (1024, 2048, 4096):  # the experiment: one thread per weight, no interleave
        grid = (triton.cdiv(n, block),)

        def launch(block=block, grid=grid):
            flat[grid](q.packed, q.absmax_q, q.absmax2, q.offset, q.code4, q.code8, out, n, BLOCK=block,
                       enable_fp_fusion=False)  # fmt: skip

        launch()
        assert torch.equal(out, dequantize_nf4_triton(q)), "flat variant disagrees"
        ms = median_ms(launch)
        rows.append({"flat_block": block, "ms": round(ms, 4), "GB_s": round(moved / ms / 1e6, 1)})
    src = torch.empty(int(moved) // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))  # reads and writes moved / 2 each: `moved` bytes in all
    best = min(rows, key=lambda r: r["ms"])
    print(f"\ndequantize 11008 x 4096 -> bf16: {moved / 1e6:.1f} MB moved; device copy of as many bytes "
          f"{copy_ms * 1e3:.1f} us = {moved / copy_ms / 1e6:.0f} GB/s", flush=True)  # fmt: skip
    for r in rows:
        mark = "  <- best" if r is best else ""
        what = (f"flat, {r['flat_block']} weights/program" if "flat_block" in r
                else f"blocks/program {r['blocks_per_program']:4d}, warps {r['num_warps']}")  # fmt: skip
        print(f"  {what}: {r['ms'] * 1e3:7.1f} us {r['GB_s']:7.1f} GB/s{mark}")
    results["dequant"] = {"shape": shape, "bytes_moved": moved, "copy_ms": round(copy_ms, 4), "configs": rows}
    quant_ms = median_ms(lambda: quantize_nf4_triton(w), iters=10)
    results["quantize_ms"] = round(quant_ms, 3)
    print(f"quantize 11008 x 4096 bf16 (ours, Triton): {quant_ms:.3f} ms", flush=True)

    if bnb is None:
        print("bitsandbytes does not import: no comparison", flush=True)
        return
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    bnb_deq_ms = median_ms(lambda: bnb.dequantize_4bit(theirs, state))
    bnb_q_ms = median_ms(lambda: bnb.quantize_4bit(w, quant_type="nf4", compress_statistics=True), iters=10)
    results["bnb"] = {"dequantize_ms": round(bnb_deq_ms, 4), "quantize_ms": round(bnb_q_ms, 3)}
    print(f"bitsandbytes {_bnb_version()}: dequantize_4bit {bnb_deq_ms * 1e3:.1f} us "
          f"({moved / bnb_deq_ms / 1e6:.0f} GB/s by the same count), quantize_4bit {bnb_q_ms:.3f} ms")  # fmt: skip

    # Which reciprocal do bitsandbytes' fast-math kernels use? Count differing bytes for both.
    mismatches = []
    for seed, dtype, scale in [(1, torch.float32, 1.0), (2, torch.float32, 0.02), (3, torch.bfloat16, 0.02),
                               (4, torch.float16, 0.05)]:  # fmt: skip
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = (torch.randn(4096, 11008, device="cuda", generator=g) * scale).to(dtype)
        tq, ts = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
        row = {"dtype": str(dtype), "scale": scale}
        for approx in (True, False):
            ours = quantize_nf4_triton(x, approx_reciprocal=approx)
            row[f"approx={approx}"] = {
                "packed": int((ours.packed != tq.view(-1)).sum()),
                "absmax_q": int((ours.absmax_q != ts.absmax).sum()),
                "absmax2": int((ours.absmax2 != ts.state2.absmax).sum()),
                "offset_equal": bool(torch.equal(ours.offset, ts.offset)),
            }
        mismatches.append(row)
        print(f"  vs bitsandbytes, {dtype} x {scale}: {json.dumps({k: v for k, v in row.items() if 'approx' in k})}")
    results["reciprocal_mismatches"] = mismatches


def bench_lora(results: dict) -> None:
    import torch

    from tunelab.kernels.lora import lora_linear
    from tunelab.peft.quant import DequantWorkspace, nf4_lora_linear, quantize_nf4

    torch.manual_seed(0)
    N, D, F, r, bf16 = 8192, 4096, 11008, 16, torch.bfloat16
    x = torch.randn(N, D, device="cuda", dtype=bf16, requires_grad=True)
    w = (torch.randn(F, D, device="cuda") * D**-0.5).to(bf16)
    a = (torch.randn(r, D, device="cuda") * D**-0.5).requires_grad_()
    b = (torch.randn(F, r, device="cuda") * 0.01).requires_grad_()
    dy = torch.randn(N, F, device="cuda", dtype=bf16)
    q = quantize_nf4(w)
    ws = DequantWorkspace()
    cases = {
        "lora_linear (bf16 W)": lambda: lora_linear(x, w, None, a, b, 2.0),
        "nf4_lora_linear": lambda: nf4_lora_linear(x, q, None, a, b, 2.0, workspace=ws),
        "nf4_lora_linear (no workspace)": lambda: nf4_lora_linear(x, q, None, a, b, 2.0),
    }
    rows = {}
    for name, fn in cases.items():

        def fwd_bwd(fn=fn):
            x.grad = a.grad = b.grad = None
            fn().backward(dy)

        def fwd(fn=fn):
            with torch.no_grad():
                fn()

        fwd_ms, fb_ms = median_ms(fwd), median_ms(fwd_bwd)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        y = fn()
        held = (torch.cuda.memory_allocated() - base) / 2**20
        del y
        rows[name] = {"fwd_ms": round(fwd_ms, 3), "fwd_bwd_ms": round(fb_ms, 3), "held_MiB": round(held)}
    weights_mib = {"bf16 W": w.numel() * 2 / 2**20, "NF4 W": q.nbytes / 2**20}
    print(f"\nfwd / fwd+bwd, x 8192 x 4096 @ W^T 11008 x 4096, r 16, bf16 (W: bf16 {weights_mib['bf16 W']:.0f} MiB, "
          f"NF4 {weights_mib['NF4 W']:.1f} MiB):")  # fmt: skip
    for name, row in rows.items():
        print(f"  {name:32s} fwd {row['fwd_ms']:.3f} ms   fwd+bwd {row['fwd_bwd_ms']:.3f} ms   "
              f"held for backward (output + saved) {row['held_MiB']} MiB")  # fmt: skip
    ratio = rows["nf4_lora_linear"]["fwd_bwd_ms"] / rows["lora_linear (bf16 W)"]["fwd_bwd_ms"]
    print(f"  nf4 / bf16 fwd+bwd time: x{ratio:.3f}")
    results["lora"] = {"rows": rows, "weights_MiB": weights_mib, "nf4_over_bf16_fwd_bwd": round(ratio, 4)}


def bench_materialize(results: dict) -> None:
    import torch

    from tunelab.kernels import select
    from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
    from tunelab.peft.quant import materialize_quantized_

    hf = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, intermediate_size=11008, vocab_size=32000, rms_norm_eps=1e-5,
              max_position_embeddings=4096, rope_theta=10000.0)  # fmt: skip
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig.from_hf(hf), select("auto"))
    finally:
        torch.set_default_dtype(default)
    t0 = time.perf_counter()
    materialize_quantized_(model, "cuda", init_std=0.02)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    alloc = (torch.cuda.memory_allocated() - start) / 2**30
    peak = (torch.cuda.max_memory_allocated() - start) / 2**30
    ids = torch.randint(0, 32000, (4, 2048), device="cuda")
    with torch.no_grad():
        fwd_ms = median_ms(lambda: model(ids, labels=ids), iters=5, warmup=2)
        loss_sum, count = model(ids, labels=ids)
    row = {"build_s": round(seconds, 2), "alloc_GiB": round(alloc, 2), "peak_GiB": round(peak, 2),
           "fwd_4x2048_ms": round(fwd_ms, 1), "loss": round(loss_sum.item() / count.item(), 3)}  # fmt: skip
    print(f"\nLlama-2-7B random init in NF4 from meta: {json.dumps(row)}", flush=True)
    results["materialize_7b"] = row


def _flat_kernel():
    """An alternative layout to time against the kernel in use: each lane makes one weight, reading its byte and its
    block's absmax state itself (more gathers, no interleave)."""
    import triton
    import triton.language as tl

    @triton.jit
    def dequantize_flat(packed_ptr, absmax_q_ptr, absmax2_ptr, offset_ptr, code4_ptr, code8_ptr, out_ptr, n,
                        BLOCK: tl.constexpr):  # fmt: skip
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        byte = tl.load(packed_ptr + offs // 2, mask=live, other=0).to(tl.int32)
        nibble = tl.where(offs % 2 == 0, byte >> 4, byte & 15)
        q8 = tl.load(absmax_q_ptr + offs // 64, mask=live, other=0).to(tl.int32)
        absmax2 = tl.load(absmax2_ptr + offs // 16384, mask=live, other=0.0)
        absmax = tl.load(code8_ptr + q8) * absmax2 + tl.load(offset_ptr)
        w = tl.load(code4_ptr + nibble) * absmax
        tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=live)

    return dequantize_flat


def _bnb_version() -> str:
    import bitsandbytes

    return bitsandbytes.__version__


def _bnb():
    try:
        import bitsandbytes.functional as bnb
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes: {e}", flush=True)
        return None
    return bnb


def main() -> int:
    env = setup()
    import torch
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}", flush=True)
    status = run_tests(env)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                     "pytest_status": status}  # fmt: skip
    for step in (bench_kernels, bench_lora, bench_materialize):
        try:
            step(results)
        except Exception as e:  # noqa: BLE001 - report and go on to the next measurement
            import traceback

            traceback.print_exc()
            results[step.__name__] = f"failed: {e!r}"
        torch.cuda.empty_cache()
        if OUT:
            (OUT / "nf4_check.json").write_text(json.dumps(results, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
