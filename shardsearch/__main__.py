"""`python -m shardsearch`: the `shardsearch` command."""

from shardsearch.tools.cli import main

main()
