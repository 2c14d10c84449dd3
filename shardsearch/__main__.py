"""`python -m shardsearch`: the `shardsearch` command."""

from shardsearch.cli import main

main()
