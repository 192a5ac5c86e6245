"""aioserver: an asyncio TCP server and its own clients in one process, to checkpoint
(run with the system's /usr/bin/python3).

    python3 aioserver.py ROUNDS

The server listens on 127.0.0.1 (port chosen by the kernel) and keeps state: a
running total, a digest of every round line, counts of lines and connections.
One client keeps ONE connection open throughout (so an established connection
exists at any save moment) and every 100 ms sends "round N" and prints the
reply. A second client connects anew every 500 ms (ROUNDS // 5 times), says
hello and keeps the answer; those answers are printed after the last round, then
a summary line. Prints "ready" first. No ports, pids or times: every run prints
the same.
"""

import asyncio
import hashlib
import sys


def say(line: str) -> None:
    print(line, flush=True)


class Server:
    def __init__(self) -> None:
        self.total = 0
        self.lines = 0
        self.connections = 0
        self.visitors = 0
        self.digest = hashlib.sha256(b"aioserver")
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self.active += 1
        self.idle.clear()
        seq = 0
        try:
            while line := await reader.readline():
                seq += 1
                self.lines += 1
                text = line.decode().strip()
                verb, _, arg = text.partition(" ")
                if verb == "round":
                    self.total += int(arg)
                    self.digest.update(line)
                    reply = (f"{text.upper()} total={self.total} seq={seq} conn={conn} "
                             f"h={self.digest.hexdigest()[:12]}")
                elif verb == "hello":
                    self.visitors += 1
                    reply = f"hi {arg} visitor={self.visitors} conn={conn}"
                else:
                    reply = f"? {text}"
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()
            self.active -= 1
            if self.active == 0:
                self.idle.set()


async def rounds_client(rounds: int,
                        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    reader, writer = conn
    for n in range(1, rounds + 1):
        writer.write(f"round {n}\n".encode())
        await writer.drain()
        reply = await reader.readline()
        if not reply:
            raise SystemExit(f"round {n}: connection closed")
        say(reply.decode().rstrip("\n"))
        await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()


async def visiting_client(port: int, visits: int, answers: list[str]) -> None:
    for k in range(1, visits + 1):
        await asyncio.sleep(0.5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"hello {k}\n".encode())
        await writer.drain()
        answers.append((await reader.readline()).decode().rstrip("\n"))
        writer.close()
        await writer.wait_closed()


async def main(rounds: int) -> None:
    state = Server()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await asyncio.open_connection("127.0.0.1", port)
    say("ready")
    # The visits' answers are printed after the rounds: printed as they come,
    # their place among the round lines would depend on timing.
    answers: list[str] = []
    await asyncio.gather(rounds_client(rounds, conn),
                         visiting_client(port, rounds // 5, answers))
    await state.idle.wait()
    server.close()
    await server.wait_closed()
    for a in answers:
        say(a)
    say(f"done rounds={rounds} total={state.total} lines={state.lines} "
        f"connections={state.connections} visitors={state.visitors} "
        f"digest={state.digest.hexdigest()[:16]}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
