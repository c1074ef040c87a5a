"""What Fuchsia's test infrastructure does, one module per tool the harness mirrors.

Each module reproduces one tool's semantics from its source (named in the
module), so that what the harness reports reads the same as what Fuchsia's
own infrastructure would have reported for the same logs.
"""
