"""`python cli.py card server ...` from a checkout reads like the installed `card server ...`.

The command itself lives in `cardserver/cli.py`, so an installed wheel adds no top-level `cli`
module to site-packages (where it would clash with a user's own `cli.py`).
"""

from cardserver.cli import build_config, card, main, script_main

__all__ = ["build_config", "card", "main"]

if __name__ == "__main__":
    script_main()
