"""GPU checks in one go: every ``gpu``-marked test, then full fine-tuning throughput and MFU.

Run through ``benchmarks/gpu/run.sh`` (see DEVELOPERS.md, "GPU checks"); sized for one
H200 (16 cores) in under 8 minutes. ``--cpu-smoke`` runs the very same stages on CPU with
a tiny model in well under 2 minutes (``tests/trainer/test_gpu_bench_smoke.py``), so the
script cannot rot between GPU loans.

Throughput: full fine-tuning of a randomly initialised Llama-style model (built here from
a config, no hub) through the trainer's real entry point (``python -m kubetune_trainer``
on a resolved FineTuneJob): padding-free batches of variable-length text rows, bf16
autocast over fp32 master weights, AdamW, no gradient checkpointing. tokens/s counts
real tokens of the timed steps (the first ``warmup`` steps, which include compilation,
are left out).

MFU = achieved FLOP/s / peak. FLOPs per step = 6 * N * T + 6 * layers * hidden * sum(L_i^2)
where N counts the parameters of every matrix multiply (all parameters but the input
embedding), T the step's tokens and L_i its sample lengths (causal attention scores and
values, forward + backward, only the unmasked half). sum(L_i^2) is estimated from the
dataset's token lengths (per token: sum(L^2) / sum(L) over all rows). Peak: the trainer's
table (kubetune_trainer.metrics.PEAK_BF16_FLOPS; H200/H100 SXM dense bf16 989 TFLOP/s).
The trainer's own ``mfu`` metric uses 6 * (all parameters) and no attention term.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for _path in ("src", "trainer", "operator"):
    if str(REPO / _path) not in sys.path:
        sys.path.insert(0, str(REPO / _path))

# import name -> (distribution, what it enables)
PACKAGES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "everything"),
    "transformers": ("transformers", "everything"),
    "peft": ("peft", "LoRA/QLoRA tests"),
    "pydantic": ("pydantic", "the API (every trainer run)"),
    "celpy": ("cel-python", "the API's CEL rules (every trainer run)"),
    "safetensors": ("safetensors", "every trainer run"),
    "pytest": ("pytest", "the gpu-marked tests"),
    "deepspeed": ("deepspeed", "test_deepspeed_zero3_bf16_on_gpu"),
    "bitsandbytes": ("bitsandbytes", "test_qlora_trains_on_gpu"),
    "flash_attn": ("flash-attn", "flash-attention 2 varlen (else FlexAttention is used)"),
}
TARGET_MFU = 0.45


@dataclass(frozen=True)
class Shape:
    """The benchmarked model and run."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_seq: int
    min_words: int
    max_words: int
    micro_batch: int  # samples per micro-batch (packed into one row)
    steps: int
    warmup: int


GPU_SHAPE = Shape("llama-1.1b", 2048, 16, 32, 8, 8192, 32000, 4096, 128, 3000, 12, 40, 10)
SMOKE_SHAPE = Shape("llama-tiny", 64, 2, 4, 2, 128, 1024, 256, 8, 120, 4, 4, 1)


def environment() -> dict[str, Any]:
    """Versions of the packages that matter, and which are missing (said plainly)."""
    found: dict[str, str | None] = {}
    for module, (dist, _) in PACKAGES.items():
        if _find_spec(module) is None:
            found[dist] = None
            continue
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "present"
    missing = {PACKAGES[m][0]: PACKAGES[m][1] for m in PACKAGES if found[PACKAGES[m][0]] is None}
    env: dict[str, Any] = {"python": sys.version.split()[0], "packages": found, "missing": missing}
    if found["torch"] is not None:
        import torch

        env["cuda"] = torch.cuda.is_available()
        env["gpus"] = torch.cuda.device_count()
        env["device"] = torch.cuda.get_device_name(0) if env["cuda"] else "cpu"
        env["cpu_cores"] = os.cpu_count()
    return env


def _find_spec(module: str) -> object | None:
    try:
        return importlib.util.find_spec(module)
    except ImportError:  # a finder that refuses the name outright
        return None


def gpu_test_files() -> list[str]:
    """Every test module that holds a ``gpu`` mark (found, not listed, so none is missed)."""
    mark = re.compile(r"pytest\.mark\.gpu\b")
    return sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").rglob("test_*.py")
        if mark.search(p.read_text(encoding="utf-8"))
    )


def run_gpu_tests(work: Path, timeout: float) -> dict[str, Any]:
    """``pytest -m gpu`` over those modules; per test: passed, failed or skipped (why)."""
    report = work / "gpu-tests.xml"
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={report}", *files]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env()
        )
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        tail = f"timed out after {timeout:.0f} s: {str(exc.stdout)[-2000:]}"
    tests: list[dict[str, str]] = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, detail = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = "skipped" if child.tag == "skipped" else "failed"
                    detail = (child.get("message") or "")[:300]
            name = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
            tests.append({"test": name, "outcome": outcome, "detail": detail})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    return {
        "files": files,
        "seconds": round(time.monotonic() - started, 1),
        "counts": counts,
        "tests": tests,
        "tail": tail if counts["failed"] or not tests else "",
    }


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / p) for p in ("src", "trainer", "operator")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def build_model(shape: Shape, directory: Path, device: str) -> tuple[Path, Any, int, int]:
    """Random-init model + tiny BPE tokenizer saved as a HF directory; (dir, tok, N, all)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kubetune_trainer.models.tiny import build_tokenizer, default_corpus, publish_tiny

    tokenizer = build_tokenizer(default_corpus(), 1024)
    config = LlamaConfig(
        vocab_size=shape.vocab,  # larger than the tokenizer's: the logits cost is the point
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_seq,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    matmul = total - model.get_input_embeddings().weight.numel()
    publish_tiny(directory, model.to("cpu"), tokenizer, shape)
    del model
    return directory, tokenizer, matmul, total


def write_rows(shape: Shape, tokenizer: Any, path: Path, count: int) -> list[int]:
    """Variable-length text rows; returns their token lengths (the trainer appends EOS)."""
    from kubetune_trainer.models.tiny import _WORDS

    rng = random.Random(0)
    lengths: list[int] = []
    rows: list[dict[str, str]] = []
    while len(rows) < count:
        text = " ".join(
            rng.choice(_WORDS) for _ in range(rng.randint(shape.min_words, shape.max_words))
        )
        n = len(tokenizer(text).input_ids) + 1
        if n <= shape.max_seq - 8:
            rows.append({"text": text})
            lengths.append(n)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lengths


def resolved_job(shape: Shape, model: Path, data: Path, out: Path, cuda: bool) -> str:
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve

    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench-gpu", "namespace": "bench"},
        "spec": {
            "method": "full",
            "model": {"uri": str(model)},
            "dataset": {
                "train": str(data),
                "format": "text",
                "maxSeqLength": shape.max_seq,
                "evalSplit": 0.0,
                "packing": True,
            },
            "hyperparameters": {
                "maxSteps": shape.steps,
                "globalBatchSize": shape.micro_batch,
                "microBatchSize": shape.micro_batch,
                "learningRate": 1e-5,
                "warmupRatio": 0.0,
                "precision": "bf16" if cuda else "fp32",
                "gradientCheckpointing": False,
            },
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "checkpoint": {"intervalSeconds": 86400},
            "output": {"uri": str(out)},
        },
    }
    job = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    return job.model_dump_json(by_alias=True)


def run_throughput(shape: Shape, work: Path, timeout: float) -> dict[str, Any]:
    import torch

    from kubetune_trainer.metrics import peak_flops

    cuda = torch.cuda.is_available()
    started = time.monotonic()
    for stale in ("model", "out"):  # a previous run's checkpoints would be resumed
        shutil.rmtree(work / stale, ignore_errors=True)
    model, tokenizer, matmul, total = build_model(shape, work / "model", "cuda" if cuda else "cpu")
    rows = shape.steps * shape.micro_batch
    lengths = write_rows(shape, tokenizer, work / "train.jsonl", rows)
    out = work / "out"
    config = work / "job.json"
    config.write_text(resolved_job(shape, model, work / "train.jsonl", out, cuda))
    env = _env(
        KUBETUNE_CONFIG=str(config),
        KUBETUNE_OUTPUT_DIR=str(out),
        KUBETUNE_METRICS_PORT="0",
        KUBETUNE_TERMINATION_LOG=str(work / "termination-log"),
    )
    built = time.monotonic() - started
    timed_out = False
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kubetune_trainer"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, tail = proc.returncode, proc.stderr[-3000:]
    except subprocess.TimeoutExpired as exc:  # the logged steps still count
        timed_out, rc, tail = True, None, str(exc.stderr)[-3000:]
    log = out / "train_log.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    timed = [r for r in records if r.get("step", 0) > shape.warmup]
    tokens = sum(float(r["tokens"]) for r in timed)
    seconds = sum(float(r["stepSeconds"]) for r in timed)
    tps = tokens / seconds if seconds > 0 else None
    per_token_attention = (
        6 * shape.layers * shape.hidden * sum(n * n for n in lengths) / sum(lengths)
    )
    flops_per_token = 6 * matmul + per_token_attention
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_flops(device) if cuda else None
    result: dict[str, Any] = {
        "model": {**asdict(shape), "parameters": total, "matmul_parameters": matmul},
        "device": device,
        "precision": "bf16 autocast, fp32 master weights" if cuda else "fp32",
        "returncode": rc,
        "timed_out": timed_out,
        "setup_seconds": round(built, 1),
        "steps_logged": len(records),
        "steps_timed": len(timed),
        "tokens_timed": int(tokens),
        "mean_sample_tokens": round(sum(lengths) / len(lengths), 1),
        "tokens_per_second": round(tps, 1) if tps else None,
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
        "mfu": round(tps * flops_per_token / peak, 4) if tps and peak else None,
        "mfu_6n_all_parameters": round(tps * 6 * total / peak, 4) if tps and peak else None,
        "target_mfu": TARGET_MFU,
    }
    if rc not in (0, None) or not timed:
        result["stderr_tail"] = tail
    return result


def markdown(results: dict[str, Any]) -> str:
    env, tests, thr = results["environment"], results["gpu_tests"], results["throughput"]
    lines = [
        f"### GPU checks ({results['mode']}, {env.get('device')}, {results['date']})",
        "",
        f"gpu-marked tests: {tests['counts']['passed']} passed, {tests['counts']['failed']} "
        f"failed, {tests['counts']['skipped']} skipped ({tests['seconds']} s).",
    ]
    if env["missing"]:
        lines.append(
            "Missing packages: "
            + "; ".join(f"{k} (needed for {v})" for k, v in env["missing"].items())
            + "."
        )
    lines += ["", "| test | outcome | detail |", "| --- | --- | --- |"]
    lines += [f"| {t['test']} | {t['outcome']} | {t['detail'][:120]} |" for t in tests["tests"]]
    m = thr.get("model", {})
    mfu = thr.get("mfu")
    lines += [
        "",
        f"Full fine-tuning throughput, {m.get('name')} ({m.get('parameters', 0) / 1e9:.2f} B "
        f"parameters: hidden {m.get('hidden')}, {m.get('layers')} layers, vocab "
        f"{m.get('vocab')}), {thr.get('precision')}, padding-free rows of "
        f"{thr.get('mean_sample_tokens')} tokens on average, {m.get('micro_batch')} rows per "
        f"step, {thr.get('steps_timed')} timed steps after {m.get('warmup')} warm-up steps:",
        "",
        "| tokens/s | MFU (6N + attention) | MFU (trainer's 6N, all parameters) | target |",
        "| --- | --- | --- | --- |",
        f"| {thr.get('tokens_per_second')} | {_pct(mfu)} | "
        f"{_pct(thr.get('mfu_6n_all_parameters'))} | {_pct(TARGET_MFU)} |",
    ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a (no known peak)" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, CPU, < 2 minutes")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json goes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kubetune-bench-gpu"))
    parser.add_argument("--tests-timeout", type=float, default=180.0)
    parser.add_argument("--bench-timeout", type=float, default=200.0)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    if args.cpu_smoke:  # the CPU path even on a GPU machine (set before torch loads)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    env = environment()
    print(json.dumps({"environment": env}, indent=1), flush=True)
    for dist, why in env["missing"].items():
        print(f"MISSING: {dist} -> no {why}", flush=True)
    if env["packages"]["torch"] is None or env["packages"]["pydantic"] is None:
        print("cannot run: torch and the kubetune API packages are required", file=sys.stderr)
        return 2
    if not args.cpu_smoke and not env.get("cuda"):
        print("no CUDA device: use --cpu-smoke off a GPU machine", file=sys.stderr)
        return 2
    shape = SMOKE_SHAPE if args.cpu_smoke else GPU_SHAPE
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": env,
    }
    skipped: dict[str, Any] = {"files": [], "seconds": 0, "tests": []}
    skipped["counts"] = dict.fromkeys(("passed", "failed", "skipped"), 0)
    tests = skipped if args.skip_tests else run_gpu_tests(args.work, args.tests_timeout)
    results["gpu_tests"] = tests
    print(json.dumps({"gpu_tests": tests["counts"], "seconds": tests["seconds"]}), flush=True)
    results["throughput"] = run_throughput(shape, args.work, args.bench_timeout)
    print(json.dumps({"throughput": results["throughput"]}, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(results))
    print(markdown(results), flush=True)
    ran = args.skip_tests or bool(tests["tests"])  # pytest that cannot start is a failure
    ok = ran and tests["counts"]["failed"] == 0 and results["throughput"]["tokens_per_second"]
    if not ran:
        print(f"the gpu-marked tests did not run:\n{tests['tail']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
