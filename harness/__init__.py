"""crosvm guest test harness: boots crosvm and QEMU guests, runs suites on their consoles."""

__version__ = "0.1.0"
