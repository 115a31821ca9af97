"""What every entry point shares: user errors become one clear line and a non-zero exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

# Exceptions that describe bad input (a path, a key, a value): the message names it, the user fixes it.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    KeyError,
    OSError,
)

EXIT_USER_ERROR = 2


def exit_on_user_error(main: Callable[[], object]) -> int:
    """Runs ``main``; a user error prints ``error: <message>`` (no traceback) and returns 2.

    Set ``N5K_HF_TRACEBACK=1`` to see the full traceback of such an error.
    """
    import os

    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get("N5K_HF_TRACEBACK"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        logging.getLogger("n5k_hf").debug("user error", exc_info=True)
        return EXIT_USER_ERROR
    return 0
