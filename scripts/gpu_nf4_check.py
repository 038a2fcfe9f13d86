"""NF4 (QLoRA base) check on a CUDA machine, as one device call from the repository root:

    python3 scripts/gpu_nf4_check.py            # carry .pk (bitsandbytes) and, if the image lacks pytest, .whl_nf4

1. Unpacks bitsandbytes from .pk/sites.tar.xz (into .site/) for the comparisons, and pytest from .whl_nf4/*.whl when
   the image has none.
2. Runs tests/quant/test_nf4*.py and test_linear.py on the GPU (bit-identity with bitsandbytes included).
3. Times, on a 4096 x 11008 weight: the dequantization kernel (GB/s against the bytes it must move, several launch
   shapes) beside a device copy of as many bytes and bitsandbytes' dequantize_4bit; quantization, ours and theirs;
   and counts bytes that differ from bitsandbytes with the approximate and the exact reciprocal.
4. Times one forward + backward of lora_linear over an NF4 weight against one over a bf16 weight at x (8192 x 4096), W (11008 x 4096),
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
           "tests/quant/test_nf4_triton.py", "tests/quant/test_nf4.py", "tests/quant/test_linear.py"]  # fmt: skip
    log_path = (OUT or Path("/tmp")) / "pytest_nf4.log"
    with log_path.open("w") as log:  # written as it runs: a run cut short still leaves its log
        status = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    print("\n".join(log_path.read_text().splitlines()[-45:]), flush=True)
    return status


def median_ms(fn, iters: int = 30, warmup: int = 5, inner: int = 1) -> float:
    """Median over `iters` timings of `inner` back-to-back calls, per call. inner = 1 includes the host's launch
    time when the GPU waits for it; inner > 1 lets the host run ahead, as in training."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def bench_kernels(results: dict) -> None:
    import torch

    from tunelab.quant.nf4 import dequantize_nf4
    from tunelab.quant.nf4_triton import dequantize_nf4_triton, quantize_nf4_triton

    torch.manual_seed(0)
    shape = (11008, 4096)  # (out, in) of Llama-2-7B's gate/up projection: 45.1M weights
    n = shape[0] * shape[1]
    w = (torch.randn(shape, device="cuda") * 0.02).to(torch.bfloat16)
    q = quantize_nf4_triton(w)
    moved = n / 2 + 2 * n + q.absmax_q.numel() + 4 * q.absmax2.numel()  # bytes read + written
    out = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    reference = dequantize_nf4(q.to("cpu")).cuda()
    rows = []
    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8):
            out.zero_()
            dequantize_nf4_triton(q, out=out, block=block, num_warps=warps)
            assert torch.equal(out, reference), f"block {block}, {warps} warps: not the reference's bits"
            ms = median_ms(
                lambda block=block, warps=warps: dequantize_nf4_triton(q, out=out, block=block, num_warps=warps)
            )
            rows.append({"block": block, "num_warps": warps, "ms": round(ms, 4), "GB_s": round(moved / ms / 1e6, 1)})
    copies = {}
    for nbytes in (int(moved), 2**30):
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        copies[nbytes] = median_ms(lambda dst=dst, src=src: dst.copy_(src))  # reads and writes nbytes / 2 each
        del src, dst
    best = min(rows, key=lambda r: r["ms"])
    default = dequantize_nf4_triton.__defaults__  # (out, dtype, block, num_warps)
    default_ms = median_ms(lambda: dequantize_nf4_triton(q, out=out))
    print(f"\ndequantize 11008 x 4096 -> bf16: {moved / 1e6:.1f} MB moved; device copy of as many bytes "
          f"{copies[int(moved)] * 1e3:.1f} us = {moved / copies[int(moved)] / 1e6:.0f} GB/s; copy of 1 GiB "
          f"{2**30 / copies[2**30] / 1e6:.0f} GB/s", flush=True)  # fmt: skip
    for r in rows:
        mark = "  <- best" if r is best else ""
        print(f"  block {r['block']:5d} warps {r['num_warps']}: {r['ms'] * 1e3:6.1f} us "
              f"{r['GB_s']:7.1f} GB/s{mark}")  # fmt: skip
    print(f"  library default {default[2:]}: {default_ms * 1e3:.1f} us {moved / default_ms / 1e6:.0f} GB/s")
    copy_ms = {str(k): round(v, 4) for k, v in copies.items()}
    results["dequant"] = {"shape": shape, "bytes_moved": moved, "copy_ms": copy_ms, "configs": rows,
                          "default_ms": round(default_ms, 4)}  # fmt: skip
    quant_ms = median_ms(lambda: quantize_nf4_triton(w), iters=10)
    results["quantize_ms"] = round(quant_ms, 3)
    print(f"quantize 11008 x 4096 bf16 (ours, Triton): {quant_ms:.3f} ms", flush=True)

    bnb = _bnb()
    if bnb is None:
        return
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    bnb_deq_ms = median_ms(lambda: bnb.dequantize_4bit(theirs, state))
    bnb_q_ms = median_ms(lambda: bnb.quantize_4bit(w, quant_type="nf4", compress_statistics=True), iters=10)
    results["bnb"] = {"dequantize_ms": round(bnb_deq_ms, 4), "quantize_ms": round(bnb_q_ms, 3)}
    print(f"bitsandbytes {_bnb_version()}: dequantize_4bit {bnb_deq_ms * 1e3:.1f} us "
          f"({moved / bnb_deq_ms / 1e6:.0f} GB/s by the same count), quantize_4bit {bnb_q_ms:.3f} ms")  # fmt: skip
    reciprocal_experiment(bnb, results)
    sass_of_bitsandbytes(results)


MODES = ("w*rn(1/a)", "w*rcp.approx(a)", "w*div.full(1,a)", "w*rcp.approx+newton", "div.full(w,a)",
         "div.approx(w,a)", "rn(w/a)")  # fmt: skip


def reciprocal_experiment(bnb, results: dict) -> None:
    """How do bitsandbytes' fast-math kernels form w / absmax? NF4 codes of whole tensors under each candidate,
    against theirs; the 8-bit stage is compared through our library's two modes."""
    import torch

    from tunelab.quant.codes import dynamic_code
    from tunelab.quant.nf4 import nf4_cuda_thresholds
    from tunelab.quant.nf4_triton import quantize_absmax_triton, quantize_blocks_triton

    kernel = _codes_kernel()
    rows = []
    for seed, dtype, scale in [(1, torch.float32, 1.0), (2, torch.float32, 0.02), (3, torch.float32, 3e-3),
                               (4, torch.bfloat16, 0.02), (5, torch.float16, 0.05)]:  # fmt: skip
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = (torch.randn(4096, 11008, device="cuda", generator=g) * scale).to(dtype)
        packed, state = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
        packed = packed.view(-1)
        theirs = torch.stack((packed >> 4, packed & 15), 1).view(-1)
        _, absmax = quantize_blocks_triton(x, approx_reciprocal=False)  # the exact block maxima
        again, _ = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
        repeats = bool(torch.equal(again.view(-1), packed))
        row = {"dtype": str(dtype).split(".")[-1], "scale": scale, "bnb_repeats": repeats}
        codes = torch.empty(x.numel(), dtype=torch.uint8, device="cuda")
        scaled = torch.empty(x.numel(), dtype=torch.float32, device="cuda")
        mid = nf4_cuda_thresholds("cuda")
        for mode, name in enumerate(MODES):
            kernel[(triton_cdiv(x.numel(), 4096),)](x.view(-1), absmax, mid, codes, scaled, x.numel(), MODE=mode,
                                                    BLOCK=4096, enable_fp_fusion=False)  # fmt: skip
            row[name] = int((codes != theirs).sum())
            if mode == 1:  # the mismatches of the mode bitsandbytes' SASS shows (MUFU.RCP, FMUL)
                for i in (codes != theirs).nonzero().flatten()[:4].tolist():
                    b = i // 64
                    block = x.view(-1)[b * 64 : (b + 1) * 64].float()
                    print(f"    at {i}: w {x.view(-1)[i].item()!r} absmax {absmax[b].item()!r} (block max "
                          f"{block.abs().max().item()!r}) x {scaled[i].item()!r} ours {codes[i].item()} theirs "
                          f"{theirs[i].item()}; thresholds {mid[max(0, theirs[i].item() - 1)].item()!r} "
                          f"{mid[min(14, theirs[i].item())].item()!r}; byte {i // 2}: theirs {packed[i // 2].item()} "
                          f"again {again.view(-1)[i // 2].item()}", flush=True)  # fmt: skip
        centered = absmax - absmax.mean()
        for approx in (True, False):
            q8, _ = quantize_absmax_triton(centered, dynamic_code("cuda"), approx_reciprocal=approx)
            row[f"absmax_q approx={approx}"] = int((q8 != state.absmax).sum())
        rows.append(row)
        print(f"  codes differing from bitsandbytes: {json.dumps(row)}", flush=True)
    results["reciprocal_experiment"] = rows


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _codes_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_codes(w_ptr, absmax_ptr, mid_ptr, out_ptr, x_ptr, n, MODE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        w = tl.load(w_ptr + offs, mask=live, other=0.0).to(tl.float32)
        a = tl.load(absmax_ptr + offs // 64, mask=live, other=1.0)
        one = tl.full(a.shape, 1.0, tl.float32)
        if MODE == 0:
            x = w * tl.math.div_rn(one, a)
        elif MODE == 1:
            x = w * tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [a], dtype=tl.float32,
                                              is_pure=True, pack=1)  # fmt: skip
        elif MODE == 2:
            x = w * tl.inline_asm_elementwise("div.full.ftz.f32 $0, $1, $2;", "=f,f,f", [one, a], dtype=tl.float32,
                                              is_pure=True, pack=1)  # fmt: skip
        elif MODE == 3:
            r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [a], dtype=tl.float32, is_pure=True,
                                          pack=1)  # fmt: skip
            r = tl.fma(r, tl.fma(-a, r, one), r)
            x = w * r
        elif MODE == 4:
            x = tl.inline_asm_elementwise("div.full.ftz.f32 $0, $1, $2;", "=f,f,f", [w, a], dtype=tl.float32,
                                          is_pure=True, pack=1)  # fmt: skip
        elif MODE == 5:
            x = tl.inline_asm_elementwise("div.approx.ftz.f32 $0, $1, $2;", "=f,f,f", [w, a], dtype=tl.float32,
                                          is_pure=True, pack=1)  # fmt: skip
        else:
            x = tl.math.div_rn(w, a)
        code = tl.zeros((BLOCK,), dtype=tl.int32)
        for k in tl.static_range(15):
            code += (x > tl.load(mid_ptr + k)).to(tl.int32)
        tl.store(out_ptr + offs, code.to(tl.uint8), mask=live)
        tl.store(x_ptr + offs, x, mask=live)

    return nf4_codes


def sass_of_bitsandbytes(results: dict) -> None:
    """The instructions around the reciprocal in bitsandbytes' NF4 quantize kernels (sm_90 code)."""
    import shutil

    lib = SITE / "bitsandbytes" / "libbitsandbytes_cuda130.so"
    tool = shutil.which("cuobjdump")
    if tool is None:
        import triton

        candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        tool = str(candidate) if candidate.exists() else None
    if tool is None or not lib.exists():
        print("no cuobjdump or no library: no SASS", flush=True)
        return
    proc = subprocess.run([tool, "-sass", "-arch", "sm_90", str(lib)], capture_output=True, text=True)
    text = proc.stdout
    if OUT:
        (OUT / "bnb_sass_quantize.txt").write_text(
            "\n".join(block for block in text.split("Function : ") if block.startswith("_Z18kQuantizeBlockwise"))
        )
    lines, keep, shown = [], False, 0
    for line in text.splitlines():
        if "Function : " in line:
            name = line.split("Function : ")[-1].strip()
            keep = name.startswith("_Z18kQuantizeBlockwise") and "Li64E" in name and "Li2EEv" in name and shown < 2
            if keep:
                shown += 1
                lines.append(name)
        elif keep and any(op in line for op in ("MUFU", "FFMA", "FMUL", "FCHK", "CALL")):
            lines.append("   " + line.strip()[:110])
    if not lines:
        names = {ln.split("Function : ")[-1].strip() for ln in text.splitlines() if "Function : " in ln}
        lines = sorted(nm for nm in names if "uantize" in nm)[:30]
        print("no kQuantizeBlockwise<.., 64, .., NF4> found; quantize kernels present:")
    print("SASS of bitsandbytes' NF4 quantize (blocksize 64), MUFU/FFMA/FMUL/FCHK/CALL lines:")
    print("\n".join(lines[:60]), flush=True)
    results["bnb_sass"] = lines[:200]


def bench_lora(results: dict) -> None:
    from functools import partial

    import torch

    from tunelab.kernels.lora import lora_linear
    from tunelab.quant.nf4_ops import DequantWorkspace, dequantize, quantize_nf4

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
        "nf4_lora_linear": lambda: lora_linear(x, partial(dequantize, q, workspace=ws), None, a, b, 2.0),
        "nf4_lora_linear (no workspace)": lambda: lora_linear(x, partial(dequantize, q), None, a, b, 2.0),
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
        fb_steady_ms = median_ms(fwd_bwd, iters=10, inner=10)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        y = fn()
        held = (torch.cuda.memory_allocated() - base) / 2**20
        del y
        rows[name] = {"fwd_ms": round(fwd_ms, 3), "fwd_bwd_ms": round(fb_ms, 3),
                      "fwd_bwd_steady_ms": round(fb_steady_ms, 3), "held_MiB": round(held)}  # fmt: skip
    weights_mib = {"bf16 W": w.numel() * 2 / 2**20, "NF4 W": q.nbytes / 2**20}
    print(f"\nfwd / fwd+bwd, x 8192 x 4096 @ W^T 11008 x 4096, r 16, bf16 (W: bf16 {weights_mib['bf16 W']:.0f} MiB, "
          f"NF4 {weights_mib['NF4 W']:.1f} MiB):")  # fmt: skip
    for name, row in rows.items():
        print(f"  {name:32s} fwd {row['fwd_ms']:.3f} ms   fwd+bwd {row['fwd_bwd_ms']:.3f} ms (back to back "
              f"{row['fwd_bwd_steady_ms']:.3f})   held for backward: {row['held_MiB']} MiB")  # fmt: skip
    nf4, bf16 = rows["nf4_lora_linear"], rows["lora_linear (bf16 W)"]
    ratio = nf4["fwd_bwd_ms"] / bf16["fwd_bwd_ms"]
    steady = nf4["fwd_bwd_steady_ms"] / bf16["fwd_bwd_steady_ms"]
    print(f"  nf4 / bf16 fwd+bwd time: x{ratio:.3f} one at a time, x{steady:.3f} back to back")
    results["lora"] = {"rows": rows, "weights_MiB": weights_mib, "nf4_over_bf16_fwd_bwd": round(ratio, 4),
                       "nf4_over_bf16_fwd_bwd_steady": round(steady, 4)}  # fmt: skip


def bench_materialize(results: dict) -> None:
    import torch

    from tunelab.kernels import select
    from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
    from tunelab.quant.linear import materialize_quantized_

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
