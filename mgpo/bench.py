"""``python -m mgpo.bench`` still runs the speed benchmark, which lives outside the library in the
top-level ``bench`` package (it times the trainer's forward too, and ``mgpo`` never imports
``train``). Nothing is imported until it runs."""

import sys


def main(argv: list[str] | None = None) -> int:
    from bench.speed import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
