"""`python -m training.cli`: the same as the `triage` command."""

from training.cli import app

app()
