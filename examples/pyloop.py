"""pyloop: a Python program to checkpoint (run with the system's /usr/bin/python3).

Each step hashes and grows some state and prints a line; the last line
depends on all of it.

    python3 pyloop.py [STEPS] [SLEEP_S]
"""
import hashlib
import sys
import time

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
h = hashlib.sha256()
table = {}
for i in range(steps):
    h.update(str(i).encode())
    table[i] = [i * j for j in range(200)]
    print(i, h.hexdigest()[:16], sum(map(sum, table.values())), flush=True)
    time.sleep(pause)
print("done", h.hexdigest(), len(table))
