"""`python -m cardserver ...` is the `card` command."""

from cardserver.cli import main

main()
