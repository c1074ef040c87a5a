"""What Fuchsia's infrastructure does, one module per tool the harness mirrors.

- build.py: a build directory's tests.json, product_bundles.json and each
  bundle's product_bundle.json (version 2), read as Fuchsia's tools read them.
- boottest.py: boot tests (`is_boot_test`), judged from the serial port as
  tools/testing/seriallistener judges them.
"""
