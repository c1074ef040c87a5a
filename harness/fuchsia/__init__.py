"""What Fuchsia's infrastructure does, one module per tool it mirrors."""
