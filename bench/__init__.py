"""rundown-agent benchmark suite: ``python -m bench`` (or ``python bench/run.py``).

Measures the agent against its own floor (the same Lua scripts driven by a bare loop) and
against peers (Dramatiq, arq) in one run, on a Redis it starts itself. See bench/README.md.
"""
