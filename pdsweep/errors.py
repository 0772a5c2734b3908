"""The one exception for bad input: what pdsweep says to a user in one line per problem, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Invalid input. `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
