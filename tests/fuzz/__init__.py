"""Fuzzing with hypothesis: every target runs a bounded number of examples (FUZZ_EXAMPLES)."""
