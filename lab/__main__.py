"""``python -m lab …``: the lab's own entry point (the same commands as ``distill lab …``)."""

from lab.commands import app

app(prog_name="python -m lab")
