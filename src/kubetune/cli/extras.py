"""Optional extras: which imports each one brings, and a clear error when one is missing.

Sub-commands are always registered (``kubetune --help`` lists them all); a command
whose extra is not installed says which extra to install instead of vanishing. Only
a *missing* third-party module counts as a missing extra: any other import error is a
broken install and propagates with its traceback.
"""

from __future__ import annotations

import importlib.util

import typer
from rich.console import Console
from rich.markup import escape

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "operator": ("kopf", "kubernetes", "prometheus_client", "aiohttp"),
    "trainer": ("torch", "transformers", "peft", "trl", "datasets", "safetensors"),
    # Only what a dev command needs beyond the base (`kubetune dashboards`).
    "dev": ("grafana_foundation_sdk",),
}

# Exit code for "this install cannot run that command" (sysexits EX_UNAVAILABLE).
MISSING_EXTRA_EXIT_CODE = 69


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str, command: str) -> None:
    """Exit with an actionable message if ``extra`` is not installed."""
    missing = missing_modules(extra)
    if missing:
        Console(stderr=True).print(
            f"[red]`kubetune {escape(command)}` needs the '{extra}' extra[/red] "
            f"(missing: {', '.join(missing)}). Install it with: "
            "pip install " + escape(f"'kubetune[{extra}]'"),
            highlight=False,
        )
        raise typer.Exit(MISSING_EXTRA_EXIT_CODE)
