"""Overhead of observability on training throughput, and the scrape cost of one job.

Two variants of the same short CPU training run (full fine-tuning, fp32, batch 8,
padding-free, fixed steps, seed 42, throughput.py's "uniform" chat data, no eval set,
no periodic checkpoint):

- ``on``  (every job's default): rank 0 updates the Prometheus registry every step,
  serves ``/metrics`` and ``/progress``, rewrites the progress document (at most once a
  second, plus a heartbeat every 5 s), records the training curves and draws them after
  training; while it trains, this script scrapes ``/metrics`` and ``/progress`` every
  ``--scrape-interval`` seconds (5 s: six times as often as the chart's PodMonitor, 30 s);
- ``off`` (``KUBETUNE_METRICS=off``, the benchmark/debug switch): none of that. The run log
  (``train_log.jsonl``, one line per step) and the log lines stay in both.

Two models: ``tiny`` (64 wide, 2 layers: ~35 ms CPU steps, the worst case, where a
per-step cost shows most) and ``4m`` (throughput.py's 256-wide, 4-layer model: ~0.3 s CPU
steps). Each run is a fresh process; the variants alternate (on/off, then off/on, ...)
for ``--rounds`` rounds per model, so drift of the shared machine hits both alike.

Two measures:

1. End to end: non-padding tokens over the wall time of the training loop
   (``Trainer.train_steps``; model loading, the final checkpoint and the outputs are
   outside it), and per process-CPU-second (``--threads 1``). Overhead = ``1 - on/off``
   per round (paired), median over rounds with the min-max spread. On a loaded 2-core
   machine run-to-run noise is several percent, far above a sub-1% effect: this measure
   bounds the overhead, it cannot resolve it.
2. Direct accounting (resolves it): all per-step observability work happens in
   ``Trainer.report_step`` (metrics, progress, curves; the run log is in both variants)
   and in background threads (HTTP server, heartbeat). Per-step cost = median time of
   ``report_step`` on minus off, plus the extra CPU of the non-main threads per step
   (process CPU time minus the main thread's); overhead = that cost over the off run's
   median step time (``stepSeconds`` of the run log plus ``report_step``). Medians keep
   preemptions by other load out.

Drawing the curves happens once, after training: it is timed separately. Scrape cost:
the number of samples (series) in a ``/metrics`` response of rank 0 taken mid-run, with
the number of metric families and the response size.

    python benchmarks/trainer/metrics_overhead.py [--rounds 5] [--configs tiny,4m]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import CACHE, manifest, save_results, train_log

HERE = Path(__file__).resolve()
BATCH = 8
SEED = 42
#: optimizer steps per run: each run's loop takes ~10-15 s on an idle 2-core machine
STEPS = {"tiny": 300, "4m": 40}
DESCRIBE = {
    "tiny": "Llama-style, hidden 64, 2 layers, vocab 1024 (0.2M parameters)",
    "4m": "throughput.py's Llama-style model, hidden 256, 4 layers, vocab 2048 (4M parameters)",
}


# ----------------------------------------------------------------------------- child
def model_and_data(config: str) -> tuple[Path, Path]:
    """The model of ``config`` (built once, cached) and throughput.py's uniform chat data."""
    from throughput import setup

    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    model, data, _ = setup(CACHE / "throughput", "uniform")
    if config == "tiny":
        corpus = default_corpus() + corpus_from_rows(chat_rows(400, seed=7, max_items=60))
        model = ensure_tiny_model(
            CACHE / "metrics_overhead" / "model-tiny", TinyModelSpec(seed=3), corpus
        )
    return model, data


def child(variant: str, config: str, steps: int, work: Path, port: int) -> dict[str, Any]:
    """One training run in this (fresh) process; the variant is already in the env."""
    import kubetune_trainer.outputs.export as export
    import kubetune_trainer.trainer as loop
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve
    from kubetune.contract import TrainerPaths
    from kubetune_trainer.config import parse_document
    from kubetune_trainer.run import run_training

    model, data = model_and_data(config)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    doc = manifest(
        "full",
        model,
        data,
        out,
        hyper={
            "maxSteps": steps,
            "globalBatchSize": BATCH,
            "microBatchSize": BATCH,
            "learningRate": 1e-4,
            "seed": SEED,
        },
        dataset={"packing": True},
    )
    clock: dict[str, float] = {}
    report_times: list[float] = []
    train_steps, report_step = loop.Trainer.train_steps, loop.Trainer.report_step
    write_curves = export.write_curves

    def timed_steps(self: Any, *args: Any, **kwargs: Any) -> Any:
        start, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        try:
            return train_steps(self, *args, **kwargs)
        finally:
            clock["seconds"] = time.perf_counter() - start
            clock["cpu_seconds"] = time.process_time() - cpu
            clock["other_threads_cpu_seconds"] = clock["cpu_seconds"] - (
                time.thread_time() - main_cpu
            )

    def timed_report(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return report_step(self, *args, **kwargs)
        finally:
            report_times.append(time.perf_counter() - start)

    def timed_curves(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return write_curves(*args, **kwargs)
        finally:
            clock["curves_seconds"] = time.perf_counter() - start

    loop.Trainer.train_steps = timed_steps  # type: ignore[method-assign]
    loop.Trainer.report_step = timed_report  # type: ignore[method-assign]
    export.write_curves = timed_curves
    resolved = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    text = resolved.model_dump_json(by_alias=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(text)
    paths = TrainerPaths(
        config=work / "job.json",
        output_dir=out,
        progress_file=out / "progress.json",
        metrics_port=port,
    )
    run_training(parse_document(text), paths)
    log = train_log(out)
    tokens = sum(r["tokens"] for r in log)
    return {
        "variant": variant,
        "config": config,
        "steps": steps,
        "tokens": tokens,
        **clock,
        "tokens_per_second": tokens / clock["seconds"],
        "tokens_per_cpu_second": tokens / clock["cpu_seconds"],
        "median_step_seconds": statistics.median(r["stepSeconds"] for r in log),
        "median_report_step_seconds": statistics.median(report_times),
        "mean_report_step_seconds": statistics.fmean(report_times),
        "curves_png": (out / "training_curves.png").exists(),
        "progress_json": (out / "progress.json").exists(),
    }


# ---------------------------------------------------------------------------- parent
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def count_series(exposition: str) -> dict[str, Any]:
    lines = exposition.splitlines()
    samples = [line for line in lines if line and not line.startswith("#")]
    names = [line.split("{")[0].split(" ")[0] for line in samples]
    return {
        "series": len(samples),
        "created_series": sum(name.endswith("_created") for name in names),
        "families": sum(line.startswith("# TYPE ") for line in lines),
        "bytes": len(exposition.encode()),
    }


class Scraper(threading.Thread):
    """Scrapes /metrics and /progress as Prometheus and the operator would; keeps the
    first /metrics response taken after half of the steps."""

    def __init__(self, port: int, steps: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.steps, self.interval = steps, interval
        self.done = threading.Event()
        self.scrapes = 0
        self.mid_run: dict[str, Any] | None = None
        self.mid_run_text = ""

    def run(self) -> None:
        while not self.done.is_set():
            try:
                metrics = get(self.base + "/metrics").decode()
                progress = json.loads(get(self.base + "/progress"))
                self.scrapes += 1
                if self.mid_run is None and progress.get("step", 0) >= self.steps // 2:
                    self.mid_run = {"step": progress["step"], **count_series(metrics)}
                    self.mid_run_text = metrics
            except OSError:
                pass  # not serving yet, or done
            self.done.wait(self.interval)


def run_variant(
    variant: str, config: str, steps: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "KUBETUNE_METRICS": variant,
            "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
            "PYTHONHASHSEED": "0",
        }
    )
    command = [sys.executable, str(HERE), "--child", variant, "--config", config]
    command += ["--steps", str(steps), "--work", str(work), "--port", str(port)]
    command += ["--threads", str(args.threads)]
    scraper = Scraper(port, steps, args.scrape_interval) if variant == "on" else None
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if scraper:
        scraper.start()
    stdout, stderr = proc.communicate(timeout=900)
    if scraper:
        scraper.done.set()
        scraper.join()
    if proc.returncode != 0:
        sys.exit(f"{variant} run failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    if scraper:
        result["scrapes"] = scraper.scrapes
        result["mid_run_scrape"] = scraper.mid_run
        if scraper.mid_run is not None:
            (work / "metrics-mid-run.prom").write_text(scraper.mid_run_text)
    return result


def spread(values: list[float], scale: float = 100.0) -> dict[str, float]:
    """Median and min-max of ``values`` times ``scale`` (100: percent, 1000: ms)."""
    return {
        "median": round(scale * statistics.median(values), 4),
        "min": round(scale * min(values), 4),
        "max": round(scale * max(values), 4),
    }


def bench_config(config: str, args: argparse.Namespace) -> dict[str, Any]:
    steps = args.steps or STEPS[config]
    work = CACHE / "metrics_overhead" / config
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        order = ["on", "off"] if index % 2 == 0 else ["off", "on"]
        runs = {v: run_variant(v, config, steps, args, work / v) for v in order}
        on, off = runs["on"], runs["off"]
        assert on["curves_png"] and on["progress_json"], "the on variant must observe"
        assert not off["curves_png"] and not off["progress_json"], "the off variant must not"
        # direct accounting: observability work per step, over the off run's step time
        cost = (
            on["median_report_step_seconds"]
            - off["median_report_step_seconds"]
            + (on["other_threads_cpu_seconds"] - off["other_threads_cpu_seconds"]) / steps
        )
        step = off["median_step_seconds"] + off["median_report_step_seconds"]
        rounds.append(
            {
                "order": order,
                "on": on,
                "off": off,
                "overhead_wall": 1 - on["tokens_per_second"] / off["tokens_per_second"],
                "overhead_cpu": 1 - on["tokens_per_cpu_second"] / off["tokens_per_cpu_second"],
                "cost_per_step_seconds": cost,
                "overhead_direct": cost / step,
            }
        )
        r = rounds[-1]
        print(
            f"[{config}] round {index + 1}/{args.rounds} ({'/'.join(order)}): "
            f"on {on['tokens_per_second']:.0f} tok/s, off {off['tokens_per_second']:.0f} tok/s; "
            f"overhead end-to-end {100 * r['overhead_wall']:+.2f}% wall, "
            f"{100 * r['overhead_cpu']:+.2f}% CPU; direct {1000 * cost:.3f} ms/step = "
            f"{100 * r['overhead_direct']:.3f}% of a {1000 * step:.1f} ms step",
            flush=True,
        )

    def med(variant: str, key: str) -> float:
        return statistics.median(r[variant][key] for r in rounds)

    return {
        "model": DESCRIBE[config],
        "steps": steps,
        "median_tokens_per_second": {
            "on": med("on", "tokens_per_second"),
            "off": med("off", "tokens_per_second"),
        },
        "median_tokens_per_cpu_second": {
            "on": med("on", "tokens_per_cpu_second"),
            "off": med("off", "tokens_per_cpu_second"),
        },
        "overhead_end_to_end_wall_percent": spread([r["overhead_wall"] for r in rounds]),
        "overhead_end_to_end_cpu_percent": spread([r["overhead_cpu"] for r in rounds]),
        "overhead_direct_percent": spread([r["overhead_direct"] for r in rounds]),
        "cost_per_step_ms": spread([r["cost_per_step_seconds"] for r in rounds], 1000),
        "median_step_ms_off": 1000 * med("off", "median_step_seconds"),
        "median_report_step_ms": {
            "on": 1000 * med("on", "median_report_step_seconds"),
            "off": 1000 * med("off", "median_report_step_seconds"),
        },
        "curves_drawing_seconds": med("on", "curves_seconds"),
        "scrapes_per_on_run": med("on", "scrapes"),
        "mid_run_scrape": next(
            (r["on"]["mid_run_scrape"] for r in rounds if r["on"].get("mid_run_scrape")), None
        ),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="tiny,4m", help="comma-separated: tiny, 4m")
    parser.add_argument("--steps", type=int, default=0, help="steps per run (0: per model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--scrape-interval", type=float, default=5.0)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--config", default="4m", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        result = child(args.child, args.config, args.steps, args.work, args.port)
        print(json.dumps(result))
        return

    started = time.monotonic()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:
        model_and_data(config)  # build the models once, before timing anything
    results = {config: bench_config(config, args) for config in configs}
    settings = {
        "data": "throughput.py's 'uniform' chat data (512 rows, 16-386 tokens per sample)",
        "method": "full",
        "precision": "fp32 (the CPU default)",
        "batch": BATCH,
        "packing": True,
        "seed": SEED,
        "rounds": args.rounds,
        "threads": args.threads,
        "scrape_interval_seconds": args.scrape_interval,
        "off_switch": "KUBETUNE_METRICS=off",
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = save_results("metrics_overhead", {"settings": settings, "configs": results})
    for config, res in results.items():
        brief = {k: v for k, v in res.items() if k != "rounds"}
        print(config, json.dumps(brief, indent=2))
    for config, res in results.items():
        direct, cost = res["overhead_direct_percent"], res["cost_per_step_ms"]
        wall, cpu = res["overhead_end_to_end_wall_percent"], res["overhead_end_to_end_cpu_percent"]
        scrape = res["mid_run_scrape"] or {}
        print(
            f"{config}: observability costs {cost['median']:.2f} ms/step "
            f"({cost['min']:.2f}-{cost['max']:.2f}) = {direct['median']:.2f}% "
            f"({direct['min']:.2f}-{direct['max']:.2f}%) of a {res['median_step_ms_off']:.0f} ms "
            f"step; end to end {wall['median']:+.1f}% wall "
            f"({wall['min']:+.1f}..{wall['max']:+.1f}), "
            f"{cpu['median']:+.1f}% CPU ({cpu['min']:+.1f}..{cpu['max']:+.1f}); "
            f"/metrics mid-run: {scrape.get('series')} series, {scrape.get('families')} families, "
            f"{scrape.get('bytes')} bytes; curves drawn in {res['curves_drawing_seconds']:.2f} s"
        )
    print(f"results: {path} ({settings['wall_seconds']} s)")


if __name__ == "__main__":
    main()
