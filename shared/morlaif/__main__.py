"""`python -m morlaif`: the installed `morlaif` command, for launchers that take a module
(`accelerate launch -m morlaif ...`, `torchrun -m morlaif ...`).

The command line lives above the library (`apps/morlaif_cli`); this shim finds it through the package's
`morlaif` console-script entry point rather than importing it, so the library imports nothing above it.
"""

from importlib.metadata import entry_points

(command,) = entry_points(group="console_scripts", name="morlaif")
command.load()()
