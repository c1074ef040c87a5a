"""crosvm guest test harness: boots crosvm and QEMU guests and runs suites on their serial consoles."""

__version__ = "0.1.0"
