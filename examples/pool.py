"""pool: a multiprocessing Pool of two workers in the middle of a map.

    python3 examples/pool.py [ITEMS]

Each result is printed as it comes, in order; the workers sleep a little per
item, so that a save finds the pool busy: tasks queued in pipes, a worker
inside one, the pool's own threads waiting on semaphores in shared memory.
"""
import multiprocessing
import sys
import time


def square(x: int) -> int:
    time.sleep(0.04)
    return x * x


if __name__ == "__main__":
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for i, r in enumerate(pool.imap(square, range(items))):
            print(f"result {i} {r}", flush=True)
    print("pool done", flush=True)
