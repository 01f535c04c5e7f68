"""INT8 artifacts against their FP32 counterparts, on whatever CPU runs this. It imports no torch, so it
can run under emulation (qemu-user answers CPUID as the CPU it emulates, and the INT8 kernels follow):

    python benchmarks/scripts/int8_on_cpu.py FOLDER [DATA]
    qemu-x86_64-static -cpu Haswell "$(command -v python)" benchmarks/scripts/int8_on_cpu.py FOLDER   (AVX2 kernels)

The emulated form has not finished here yet: on a 2-core machine shared with a test run it had not printed
its first row after 14 minutes (a single emulated ONNX Runtime INT8 inference of the demo model took
14 ms against 0.55 ms native, and its logits differed from the native ones: AVX2 kernels at work).

FOLDER holds model.onnx / model_int8.onnx and model.xml / model_int8.xml (an `edgekit export --int8` output);
DATA defaults to the embedded Fashion-MNIST subset. Each INT8 model is compared with its FP32 model on the
same runtime, on the model's own test split: top-1 agreement and accuracy delta, next to the export gate
(edgekit.export.verify.TOLERANCES). The first lines say what the process sees: CPUID features (numpy's
runtime dispatch) and /proc/cpuinfo flags (what edgekit's INT8 defaults read).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main() -> None:
    from edgekit.core.data import load_split, test_subset
    from edgekit.core.hardware import cpu_flags
    from edgekit.core.metrics import predictions
    from edgekit.runtimes import RuntimeOptions, load_runtime

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpuid
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as cpuid
    folder = Path(sys.argv[1])
    data = sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).resolve().parents[2] / "edgekit/data/fashion-mnist-mini")
    print("command: python benchmarks/scripts/int8_on_cpu.py " + " ".join(sys.argv[1:]))
    print("CPUID (numpy):", " ".join(k for k in ("AVX2", "FMA3", "AVX512F", "AVX512_ICL", "AVX512_SPR") if cpuid.get(k)),
          "| /proc/cpuinfo:", " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or "vnni" in f)))
    # Gates of edgekit.export.verify, restated: importing that module would import the torch-side verifier.
    min_agreement, min_delta_pp = 0.90, -1.0
    for fp32_name, int8_name in (("model.onnx", "model_int8.onnx"), ("model.xml", "model_int8.xml")):
        if not (folder / int8_name).is_file():
            continue
        fp32, int8 = (load_runtime(folder / n, options=RuntimeOptions(threads=2)) for n in (fp32_name, int8_name))
        table = load_split(data, **fp32.spec.split)
        indices = test_subset(table, 0)
        labels = table.labels[indices]
        outputs = [rt.infer(table.inputs(indices, rt.spec)) for rt in (fp32, int8)]
        reference, quantized = (predictions(o, fp32.spec.binary) for o in outputs)
        agreement = float((reference == quantized).mean())
        delta = 100 * float((quantized == labels).mean() - (reference == labels).mean())
        recipe = int8.spec.quantization
        ok = agreement >= min_agreement and delta >= min_delta_pp
        print(f"{int8_name:<16} vs {fp32_name:<11} {len(indices)} images  agreement {agreement:.4f}  "
              f"delta {delta:+.2f} pp  {'ok' if ok else 'FAIL'}  (recipe: {recipe.get('scheme')}, "
              f"reduce_range {recipe.get('reduce_range')}, bias correction {recipe.get('bias_correction')})",
              flush=True)
        fp32.close()
        int8.close()


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
