"""`plan diff` (being written)."""


def add_parser(subparsers) -> None:
    subparsers.add_parser("diff", help="compare two plans")
