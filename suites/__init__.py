"""Built-in suites, written against the Guest API."""
