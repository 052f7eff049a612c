"""Inference speed of the generator: eager PyTorch, compiled, and onnxruntime, side by side.

    python benchmarks/translate.py [--quick]

The reference's generator (9 residual blocks, 64 filters) translates a batch of 8 images at
256x256 and one image at 1024x1024, under ``torch.inference_mode``. Backends, each timed
alternately with the others in one process, median of the timed runs after warm-up:

- ``eager``: the module as it is, float32;
- ``eager bf16``: under bfloat16 autocast (where the CPU or GPU has bf16);
- ``compiled``: ``torch.compile`` of the module (inductor);
- ``onnxruntime``: the ``cyclegan export --format onnx`` file on onnxruntime's CPU provider (on
  the CPU only).

Peak memory: the CUDA allocator's high-water mark, or on the CPU the growth of resident memory
(VmHWM, reset before) over one call, each backend in a fresh subprocess. Results go to
``docs/benchmarks.md`` (its translate section) with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_step import machine, replace_section  # noqa: E402

from cyclegan.inference import Generator  # noqa: E402
from cyclegan.models import GeneratorResNet  # noqa: E402


def build(backend: str, device: torch.device, onnx_path: Path | None):
    torch.manual_seed(0)
    net = GeneratorResNet((3,), 9).eval().to(device)
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    if backend == "compiled":
        net = torch.compile(net)
    bf16 = backend == "eager bf16"

    def run(x: torch.Tensor):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x)

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_probe(backend: str, batch: int, size: int, onnx_path: str | None) -> None:
    import gc

    device = torch.device("cpu")
    fn = build(backend, device, Path(onnx_path) if onnx_path else None)
    x = torch.rand(batch, 3, size, size) * 2 - 1
    fn(torch.rand(1, 3, 64, 64) * 2 - 1)  # initialised, and compiled where it is
    gc.collect()

    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    fn(x)
    print((status("VmHWM") - before) / 2**20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256x256 batch 8 only, eager and onnxruntime")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--memory_probe", nargs=4, metavar=("BACKEND", "BATCH", "SIZE", "ONNX"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        backend, batch, size, onnx_path = args.memory_probe
        memory_probe(backend, int(batch), int(size), onnx_path if onnx_path != "-" else None)
        return
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    backends = ["eager", "eager bf16"] + ([] if args.quick else ["compiled"]) + ([] if cuda else ["onnxruntime"])
    cases = [(8, 256)] if args.quick else [(8, 256), (1, 1024)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if not cuda:
            from cyclegan.export import export_onnx

            torch.manual_seed(0)
            net = GeneratorResNet((3,), 9).eval()
            onnx_path = Path(tmp) / "g.onnx"
            export_onnx(Generator(net, 3, 3, 4, "benchmark", "reference"), onnx_path)
        fns = {b: build(b, device, onnx_path) for b in backends}
        for batch, size in cases:
            x = (torch.rand(batch, 3, size, size) * 2 - 1).to(device)
            reps = 5 if size <= 256 else 3
            times: dict[str, list[float]] = {b: [] for b in backends}
            for b in backends:  # warm-up (and compilation)
                fns[b](x)
                fns[b](x)
            for _ in range(reps):
                for b in backends:
                    sync(device)
                    t = time.perf_counter()
                    fns[b](x)
                    sync(device)
                    times[b].append(time.perf_counter() - t)
            eager = batch / statistics.median(times["eager"])
            for b in backends:
                rate = batch / statistics.median(times[b])
                if cuda:
                    mem = None
                else:
                    out = subprocess.run([sys.executable, __file__, "--memory_probe", b, str(batch), str(size),
                                          str(onnx_path) if b == "onnxruntime" else "-"],
                                         capture_output=True, text=True, check=True)
                    mem = float(out.stdout.strip().splitlines()[-1])
                rows.append({"batch": batch, "size": size, "backend": b, "img_s": rate, "vs_eager": rate / eager,
                             "memory_mib": mem})
                print(json.dumps(rows[-1]), flush=True)
    fastest = max((r for r in rows if r["size"] == 256), key=lambda r: r["img_s"])
    print(f"fastest at 256x256: {fastest['backend']}, {fastest['vs_eager']:.2f}x eager")
    if args.quick:
        return
    lines = [
        "# Inference benchmark",
        "",
        f"Made by `python benchmarks/translate.py` on {time.strftime('%Y-%m-%d')}; machine: {machine(device)}.",
        "",
        "The reference generator (9 residual blocks), random weights, `torch.inference_mode`; backends timed "
        "alternately in one process, median img/s. Memory: growth of resident memory over one call (VmHWM), "
        "each backend in a fresh process." if not cuda else "Memory: not measured on CUDA here.",
        "",
        "| input | backend | img/s | vs eager | memory (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        mem = f"{r['memory_mib']:.0f}" if r["memory_mib"] is not None else "-"
        lines.append(f"| {r['batch']} x {r['size']}x{r['size']} | {r['backend']} | {r['img_s']:.3g} | "
                     f"{r['vs_eager']:.2f} | {mem} |")
    lines.append("")
    replace_section(Path(args.output), "translate", "\n".join(lines))


if __name__ == "__main__":
    main()
