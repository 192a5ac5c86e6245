"""pythreads: Python threads (the system's /usr/bin/python3) passing work through a queue.

    python3 pythreads.py [ITEMS]
"""
import hashlib
import queue
import sys
import threading
import time

items = int(sys.argv[1]) if len(sys.argv) > 1 else 60
work: queue.Queue = queue.Queue()
results: dict[int, str] = {}
lock = threading.Lock()


def worker() -> None:
    while True:
        n = work.get()
        if n is None:
            return
        digest = hashlib.sha256(str(n).encode() * 1000).hexdigest()[:12]
        with lock:
            results[n] = digest
        time.sleep(0.01)


threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(3)]
for t in threads:
    t.start()
for n in range(items):
    work.put(n)
    if n % 10 == 9:
        while len(results) < n + 1:
            time.sleep(0.005)
        print(n, results[n], flush=True)
for _ in threads:
    work.put(None)
for t in threads:
    t.join()
print("done", hashlib.sha256("".join(results[k] for k in sorted(results)).encode()).hexdigest())
