"""The `otaship` script: the receiver's command line, or one line saying how to get it.

`pip install otaship` brings only what the action needs; the receiver's packages
come with the `receiver` extra. Without them, importing the receiver's command
line fails on the first one missing, and that is said as one line, not a traceback.
`otaship firmware` needs none of them, so it is run before the receiver is looked for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from otaship.closed_pipe import quiet_on_closed_pipe

EXIT_ERROR = 1
INSTALL = "pip install 'otaship[receiver]'"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return quiet_on_closed_pipe(lambda: _run(args))


def _run(args: list[str]) -> int:
    if args[:1] == ["firmware"]:
        from otaship.firmware.cli import main as firmware_main

        return firmware_main(args[1:])
    try:
        from otaship.receiver.cli import main as receiver_main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        # A module of this package itself missing is a broken install, not the extra.
        if not missing or missing == "otaship":
            raise
        print(
            f"otaship: the receiver is not installed (no module {missing}): {INSTALL}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return receiver_main(args)


if __name__ == "__main__":
    sys.exit(main())
