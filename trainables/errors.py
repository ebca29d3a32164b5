"""The one error type for bad user input (config, data, paths, cluster address), and field checks."""

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


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type where it has no text), cut to `limit` characters: what an
    InputError quotes of a library's error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def require_int(name: str, value: object, minimum: int) -> None:
    """InputError(name, ...) unless `value` is an integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")


def require_number(name: str, value: object) -> None:
    """InputError(name, ...) unless `value` is an int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, f"must be a number, got {value!r}")


def require_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """InputError(name, ...) unless `value` is one of `allowed`."""
    if value not in allowed:
        raise InputError(name, f"must be one of {', '.join(allowed)}; got {value!r}")
