"""User-facing errors.

Anything raised as :class:`UserError` is a problem with the user's input
(a recipe, a path, a missing package) rather than a bug. The CLI prints it as
one line per problem on stderr and exits with code 2; the Python API lets it
propagate so notebooks see the same text.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: says what is wrong, where, and how to fix it.

    Args:
        problems: one or more self-contained lines, e.g.
            ``"recipe.yaml: ppo.learning_rate = 'fast': expected a number; fix: write e.g. 1e-5"``.
    """

    exit_code = 2

    def __init__(self, *problems: str):
        if not problems:
            raise ValueError("UserError needs at least one problem line")
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TrainingStopped(UserError):
    """A guard stopped training (non-finite loss or reward, KL past ppo.max_kl); the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after the update in progress, which was saved first."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "ended by a signal"
