"""``python -m agent.inspect ...``: the inspection CLI on its own."""

from agent.inspect.cli import main

if __name__ == "__main__":
    main()
