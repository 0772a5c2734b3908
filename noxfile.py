"""Developer sessions: `nox -s tests`, `nox -s unit` (the fast lane), `nox -s lint`, `nox -s typecheck`, `nox -s bench`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

# The CPU build of torch comes first: a bare `torch` requirement may pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def install(session: nox.Session, extras: str = "dev,hf,deepspeed,postgres") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The README test command (all CPU tests, slow ones included; GPU tests skip without CUDA)."""
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """The fast lane: every test not marked slow (in-process and short CLI tests), for after each change."""
    install(session)
    session.run("python", "-m", "pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the import-linter contract that enforces DESIGN.md's layering."""
    session.install("ruff", "import-linter")
    session.install("-e", ".", "--no-deps")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py; each writes benchmarks/results/<script>.json."""
    install(session)
    for script in sorted(Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script))
