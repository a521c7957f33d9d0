"""bench/run cluster: the pool and mpcp over MPI ranks (mpirun -n W+1: rank 0
runs the program, W ranks work) beside the local pool and local mpcp with W
worker processes, for W = 1, 2, 4, measured in the same run on this machine.

- pool: empty tasks per second, apply_async + get of 20,000 tasks
  (bench/cluster_pool.c; the time counts from the first submit, so mpirun's
  start is not in it).
- mpcp: files per second copying 20,000 x 4 KiB files in 200 folders on
  tmpfs, from mpcp's own --json seconds (the copy, without mpirun's start),
  and the whole command's wall time (with it).
- walk: mpcp over 3 ranks copying 20,000 files in about 10,000 small
  folders, with the folders read by the ranks (MPCP_WALK=workers) beside
  rank 0 reading them (MPCP_WALK=planner), rounds interleaved: from tmpfs,
  and through a FUSE mount (bindfs) where every stat crosses to a user-space
  daemon, as on a network filesystem, if bindfs is installed.

Median of rounds. Needs the MPI build (libmproc_mpi, mpcp-mpi, Open MPI).
usage: cluster.py BUILD_DIR [--rounds N]
Prints JSON lines: the MPI figure with the local one as the reference."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MPIRUN = ["mpirun", "--oversubscribe", "--allow-run-as-root", "--bind-to", "none"]
WORKERS = (1, 2, 4)


def run_json(command, env=None):
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, env=env, text=True).stdout
    lines = [l for l in out.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def pool_rate(build, workers, mpi, tasks):
    program = os.path.join(build, "bench", "cluster_pool")
    if mpi:
        return run_json(MPIRUN + ["-n", str(workers + 1), program, str(tasks)])["tasks_per_s"]
    env = dict(os.environ, MPROC_POOL_BACKEND="local")
    return run_json([program, str(tasks), str(workers)], env)["tasks_per_s"]


def mpcp_run(build, workers, mpi, src, dst):
    mpcp = os.path.join(build, "tools", "mpcp", "mpcp")
    shutil.rmtree(dst, ignore_errors=True)
    if mpi:
        command = MPIRUN + ["-n", str(workers + 1), mpcp, "-a", "--json", src, dst]
    else:
        command = [mpcp, "-a", "--json", "-j", str(workers), src, dst]
    t0 = time.perf_counter()
    summary = run_json(command)
    wall = time.perf_counter() - t0
    return summary["files"] / summary["seconds"], wall


def walk_seconds(build, walk, src, dst):
    mpcp = os.path.join(build, "tools", "mpcp", "mpcp")
    shutil.rmtree(dst, ignore_errors=True)
    env = dict(os.environ, MPCP_WALK=walk)
    command = MPIRUN + ["-x", "MPCP_WALK", "-n", "3", mpcp, "-a", "--json", src, dst]
    return run_json(command, env)["seconds"]


def walk_cases(build, work, rounds):
    src, dst = os.path.join(work, "small"), os.path.join(work, "dst")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-tree"), src,
                    "--files", "20000", "--dirs", "4000", "--size", "4096", "--big", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    sources = [("tmpfs", src)]
    mnt = os.path.join(work, "fuse")
    if shutil.which("bindfs"):
        os.makedirs(mnt)
        subprocess.run(["bindfs", src, mnt], check=True)
        sources.append(("FUSE (bindfs)", mnt))
    try:
        for name, path in sources:
            ours, reference = [], []
            for _ in range(rounds):
                ours.append(walk_seconds(build, "workers", path, dst))
                reference.append(walk_seconds(build, "planner", path, dst))
            emit("mpcp s, 10,000 small folders, %s, folders read by the ranks" % name, "s",
                 statistics.median(ours), statistics.median(reference), "read by rank 0")
    finally:
        if len(sources) > 1:
            subprocess.run(["fusermount", "-u", mnt], check=False)


def emit(case, unit, ours, reference, reference_name):
    print(json.dumps({"bench": "cluster", "case": case, "value": round(ours, 3), "unit": unit,
                      "ours": "over MPI", "reference": reference_name,
                      "reference_value": round(reference, 3)}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("mpirun") or not os.path.exists(
            os.path.join(args.build, "bench", "cluster_pool")):
        sys.exit("cluster.py: needs Open MPI and the MPI build (scripts/install-deps --mpi)")
    for w in WORKERS:
        mpi = statistics.median(pool_rate(args.build, w, True, 20000) for _ in range(args.rounds))
        local = statistics.median(
            pool_rate(args.build, w, False, 20000) for _ in range(args.rounds))
        emit("pool tasks/s, %d worker%s" % (w, "s" * (w > 1)), "tasks/s", mpi, local,
             "local pool")
    work = "/dev/shm/mproc-bench-cluster"
    shutil.rmtree(work, ignore_errors=True)
    src, dst = os.path.join(work, "src"), os.path.join(work, "dst")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-tree"), src,
                    "--files", "20000", "--dirs", "200", "--size", "4096", "--big", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        for w in WORKERS:
            mpi = [mpcp_run(args.build, w, True, src, dst) for _ in range(args.rounds)]
            local = [mpcp_run(args.build, w, False, src, dst) for _ in range(args.rounds)]
            emit("mpcp files/s, %d worker%s" % (w, "s" * (w > 1)), "files/s",
                 statistics.median(r[0] for r in mpi), statistics.median(r[0] for r in local),
                 "local mpcp")
            emit("mpcp wall s, %d worker%s" % (w, "s" * (w > 1)), "s",
                 statistics.median(r[1] for r in mpi), statistics.median(r[1] for r in local),
                 "local mpcp")
        walk_cases(args.build, work, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
