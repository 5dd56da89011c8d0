"""Personal-data scanning speed: rows/s and seconds per million rows, side by side.

Rows: short support chats (one user and one assistant message, ~80 characters of
content) from ``kubetune_trainer.privacy.fake.pii_chat_rows``; ``--share`` of them (default
0.2) carry fake personal data of one kind or two, the rest are clean (dates, versions,
prices). Rows are decoded from JSON lines in each timed pass, as the trainer reads them.

Variants, each try in a fresh Python process, interleaved (round-robin), the same number
of tries each (default 3), on the same rows:

* ``read``: json.loads and a walk over every string of the row (no detection) — the
  floor every variant pays;
* ``scan-all``: count every kind (actions refuse and allow);
* ``redact-all``: replace every kind with placeholders (action redact; default kinds);
* ``redact-structured``: redact without the context-based personName/streetAddress.

Reported per variant: median rows/s, seconds per million rows (median; min-max over tries)
and the ratio to ``read``. Single-threaded CPython, ``nice -n 19`` on a shared machine.

    python benchmarks/privacy/bench_pii.py            # writes benchmarks/privacy/pii_results.json
    python benchmarks/privacy/bench_pii.py --rows 1000000 --tries 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for sub in ("src", "trainer"):
    sys.path.insert(0, str(REPO / sub))

VARIANTS = ("read", "scan-all", "redact-all", "redact-structured")
STRUCTURED = ["email", "phone", "creditCard", "bankAccount", "nationalId", "ipAddress"]


def make_rows(path: Path, rows: int, share: float, seed: int) -> dict[str, Any]:
    from kubetune_trainer.privacy.fake import pii_chat_rows

    data = pii_chat_rows(rows, seed=seed, share=share)
    lines = [json.dumps(r) for r in data]
    path.write_text("\n".join(lines) + "\n")
    chars = [sum(len(m["content"]) for m in r["messages"]) for r in data]
    return {"rows": rows, "share": share, "seed": seed, "meanContentChars": statistics.mean(chars)}


def one_try(variant: str, path: Path) -> dict[str, Any]:
    """Child process: time one pass of ``variant`` over the rows in ``path``."""
    from collections import Counter

    from kubetune_trainer.privacy import redact_value, scan_value

    lines = path.read_text().splitlines()
    total: Counter[str] = Counter()

    def walk(node: Any) -> int:
        if isinstance(node, str):
            return len(node)
        if isinstance(node, dict):
            return sum(walk(v) for k, v in node.items() if k != "role")
        if isinstance(node, list):
            return sum(walk(v) for v in node)
        return 0

    start = time.perf_counter()
    for line in lines:
        row = json.loads(line)
        if variant == "read":
            walk(row)
        elif variant == "scan-all":
            total.update(scan_value(row))
        elif variant == "redact-all":
            total.update(redact_value(row)[1])
        else:
            total.update(redact_value(row, STRUCTURED)[1])
    seconds = time.perf_counter() - start
    return {"variant": variant, "seconds": seconds, "rows": len(lines), "findings": dict(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "pii_results.json")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_try(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        settings = make_rows(path, args.rows, args.share, args.seed)
        tries: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for i in range(args.tries):
            for variant in VARIANTS:  # interleaved: drift hits every variant alike
                out = subprocess.run(
                    [sys.executable, __file__, "--child", variant, str(path)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                result = json.loads(out.stdout)
                tries[variant].append(result)
                print(f"try {i + 1} {variant}: {result['seconds']:.2f}s", flush=True)
    summary: dict[str, Any] = {}
    read_median = statistics.median(t["seconds"] for t in tries["read"])
    for variant, results in tries.items():
        secs = [t["seconds"] for t in results]
        per_million = [s / args.rows * 1e6 for s in secs]
        median = statistics.median(secs)
        summary[variant] = {
            "rowsPerSecond": round(args.rows / median),
            "secondsPerMillionRows": round(statistics.median(per_million), 2),
            "secondsPerMillionRowsRange": [round(min(per_million), 2), round(max(per_million), 2)],
            "ratioToRead": round(median / read_median, 2),
            "findings": results[0]["findings"],
        }
    record = {
        "settings": {
            **settings,
            "tries": args.tries,
            "variants": list(VARIANTS),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "process": "one pass per fresh process, single thread, interleaved tries",
        },
        "results": summary,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for variant, s in summary.items():
        print(
            f"{variant:18s} {s['rowsPerSecond']:>9,} rows/s  "
            f"{s['secondsPerMillionRows']:6.2f} s per million rows "
            f"({s['secondsPerMillionRowsRange'][0]}-{s['secondsPerMillionRowsRange'][1]})  "
            f"x{s['ratioToRead']} of read"
        )


if __name__ == "__main__":
    main()
