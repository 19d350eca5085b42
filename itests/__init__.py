"""Integration tests that compose the real packages, and the harness that hosts them."""
