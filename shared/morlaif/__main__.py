"""`python -m morlaif`: the `morlaif` command, for launchers that take a module (`accelerate launch -m morlaif ...`)."""

from morlaif_cli.main import main

main()
