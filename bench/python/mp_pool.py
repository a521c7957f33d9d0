"""Reference for bench_pool: Python's Pool.apply_async (then get),
Pool.apply one at a time, Pool.map with default chunks, and
ProcessPoolExecutor.submit, two workers, fork context, empty tasks.
Median of rounds; JSON lines for bench/run to pair with ours."""
import concurrent.futures as cf
import json
import multiprocessing as mp
import statistics
import sys
import time


def empty(x):
    return None


def echo(x):
    return x


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    n_async, n_sync, n_map, n_ppe = (int(40000 * scale), int(4000 * scale),
                                     int(2000000 * scale), int(20000 * scale))
    ctx = mp.get_context("fork")
    out = []
    with ctx.Pool(2) as pool:
        t = timed(lambda: [r.get() for r in [pool.apply_async(empty, (i,))
                                             for i in range(n_async)]], rounds)
        out.append(("apply_async+get, empty tasks", "tasks/s", "python Pool.apply_async",
                    n_async / t))
        t = timed(lambda: [pool.apply(empty, (i,)) for i in range(n_sync)], rounds)
        out.append(("apply then get, one at a time", "us", "python Pool.apply", t / n_sync * 1e6))
        items = list(range(n_map))
        t = timed(lambda: pool.map(echo, items), rounds)
        out.append(("map, 8-byte items, default chunks", "items/s", "python Pool.map", n_map / t))
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        t = timed(lambda: [f.result() for f in [ex.submit(empty, i) for i in range(n_ppe)]],
                  rounds)
        out.append(("apply_async+get, empty tasks", "tasks/s",
                    "python ProcessPoolExecutor.submit", n_ppe / t))
    for case, unit, ref, value in out:
        print(json.dumps({"bench": "pool", "case": case, "unit": unit, "reference": ref,
                          "reference_value": value}))


if __name__ == "__main__":
    main()
