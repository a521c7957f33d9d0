# Named mp_*.py: a file named queue.py would hide the standard library module.
"""Reference for bench_queue: messages/s and GB/s through Python's
multiprocessing.Queue and SimpleQueue (fork context), for the same message
sizes and process counts. Children wait on an Event so that only the transfer
is timed. Median of rounds; JSON lines for bench/run to pair with ours."""
import json
import multiprocessing as mp
import statistics
import sys
import time

SIZES = [("64B", 64, 200_000), ("4KiB", 4096, 100_000), ("1MiB", 1 << 20, 1_000)]


def producer(q, go, size, count):
    payload = b"x" * size
    go.wait()
    for _ in range(count):
        q.put(payload)


def consumer(q, go, count):
    go.wait()
    for _ in range(count):
        q.get()


def one_round(ctx, kind, size, total, pairs):
    q = ctx.Queue() if kind == "Queue" else ctx.SimpleQueue()
    go = ctx.Event()
    per = total // pairs
    procs = [ctx.Process(target=consumer, args=(q, go, per)) for _ in range(pairs)]
    procs += [ctx.Process(target=producer, args=(q, go, size, per)) for _ in range(pairs)]
    for p in procs:
        p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    return time.perf_counter() - t0


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    ctx = mp.get_context("fork")
    for label, size, count in SIZES:
        total = max(2, int(count * scale)) // 2 * 2
        for pairs in (1, 2):
            for kind in ("Queue", "SimpleQueue"):
                t = statistics.median(one_round(ctx, kind, size, total, pairs)
                                      for _ in range(rounds))
                case = "%s %d->%d" % (label, pairs, pairs)
                ref = "python mp.%s" % kind
                print(json.dumps({"bench": "queue", "case": case, "unit": "msg/s",
                                  "reference": ref, "reference_value": total / t}))
                print(json.dumps({"bench": "queue", "case": case + " GB/s", "unit": "GB/s",
                                  "reference": ref, "reference_value": total * size / t / 1e9}))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
