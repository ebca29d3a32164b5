"""The one error type for bad user input (config, data, paths, cluster address)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user. The CLI prints `error: WHERE: PROBLEM` and exits 2.

    `where` names the field, key, flag or file; `problem` says what is wrong and
    what is allowed.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")
