"""Reference for bench_process: start+join latency of Python's
multiprocessing.Process with the fork start method, median of rounds.
Prints one JSON line: a reference figure for bench/run to pair with ours."""
import json
import multiprocessing as mp
import statistics
import sys
import time


def empty():
    pass


def one_round(ctx, iterations):
    t0 = time.perf_counter()
    for _ in range(iterations):
        p = ctx.Process(target=empty)
        p.start()
        p.join()
    return (time.perf_counter() - t0) / iterations


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    ctx = mp.get_context("fork")
    times = [one_round(ctx, iterations) for _ in range(rounds)]
    # Python's loop builds each Process object too: it is the reference for both cases.
    for case in ("start+join", "create+start+join+destroy"):
        print(json.dumps({"bench": "process", "case": case, "unit": "us",
                          "reference": "python mp.Process (fork)",
                          "reference_value": statistics.median(times) * 1e6}))


if __name__ == "__main__":
    main()
