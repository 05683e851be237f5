"""A child with sync handlers only: task_sdk serves it inline (no asyncio, one thread)."""

import time

from task_sdk import run, task


@task("quick")
def quick(payload):
    return payload


@task("hang")
def hang(payload):
    while True:
        time.sleep(60)


if __name__ == "__main__":
    run()
