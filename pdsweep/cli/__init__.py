"""The `pdsweep` command line: a Typer app (app.py) that parses, calls one function and renders
(views.py). Nothing heavy is imported until a command runs.
"""
