"""``python -m kubetune_operator [options]``: the same as ``kubetune operator run``."""

from __future__ import annotations

from kubetune.cli.operator import app

if __name__ == "__main__":
    app(prog_name="kubetune-operator")
