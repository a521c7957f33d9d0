"""bench/run copy: mpcp against cp -a, rsync -a, tar | tar and the
tutorial's Python pool copier, on three datasets (20,000 x 4 KiB files in 200
folders; 2,000 files of 1 KiB to 8 MiB; 4 x 512 MiB files), on tmpfs
(/dev/shm) and on the work disk (ext4 here), and against floors built next to
mpcp in bench/: on the large files a plain copy_file_range loop in one
process (bench/cfr_copy.c); on the others the least-work copier in one
process and in one per CPU (bench/floor_copy.c), and the same with its
system calls batched through io_uring (floor_copy -U, where it was built
with liburing and io_uring works). Warm page cache: the source
is read once before timing. Each tool copies into a fresh destination,
after a sync (not timed) so that none pays for another's write-back;
median of rounds; every copy is checked (contents and sizes) once per tool
and dataset.

usage: copy.py MPCP [--cfr CFR_COPY] [--floor FLOOR_COPY] [--rounds N] [--only DATASET] [--fs tmpfs,disk]
Prints JSON lines: mpcp's seconds with each tool's seconds as the reference."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_small(path):
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-tree"), path,
                    "--files", "20000", "--dirs", "200", "--size", "4096", "--big", "0"],
                   check=True, stdout=subprocess.DEVNULL)


def make_mixed(path):
    import random
    rng = random.Random(2)
    blob = rng.randbytes(8 << 20)
    for i in range(2000):
        folder = os.path.join(path, "d%02d" % (i % 40))
        os.makedirs(folder, exist_ok=True)
        size = int(1024 * (8192 ** rng.random()))  # 1 KiB to 8 MiB, log-uniform
        with open(os.path.join(folder, "f%04d" % i), "wb") as f:
            f.write(blob[:size])


def make_large(path):
    os.makedirs(path)
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(os.path.join(path, "large%d.bin" % i), "wb") as f:
            for _ in range(512):
                f.write(block)


SMALL = "20k x 4KiB"
LARGE = "4 x 512MiB"
DATASETS = {SMALL: make_small, "2k x 1KiB-8MiB": make_mixed, LARGE: make_large}


def tools(mpcp, cfr, floor, dataset):
    py = [sys.executable, os.path.join(HERE, "python", "tutorial_copy.py")]
    found = {
        "mpcp -a": lambda s, d: [[mpcp, "-a", s, d]],
        "cp -a": lambda s, d: [["cp", "-a", s, d]],
        "rsync -a": lambda s, d: [["rsync", "-a", s + "/", d + "/"]],
        "tar | tar": lambda s, d: [["sh", "-c", 'mkdir -p "$2" && tar -C "$1" -cf - . | tar -C "$2" -xf -',
                                    "tar", s, d]],
        "python tutorial Pool(5) copier": lambda s, d: [py + [s, d]],
    }
    # The floor for large files, where the data copy is all there is to measure.
    if dataset == LARGE and cfr and os.access(cfr, os.X_OK):
        found["copy_file_range loop"] = lambda s, d: [[cfr, s, d]]
    # The floor for many files: the least work per file, in 1 process and in one per CPU.
    if dataset != LARGE and floor and os.access(floor, os.X_OK):
        n = str(len(os.sched_getaffinity(0)))
        found["C floor, 1 process"] = lambda s, d: [[floor, s, d]]
        found["C floor, %s processes" % n] = lambda s, d: [[floor, "-P", n, s, d]]
        if ring_works(floor):
            found["C floor, io_uring, 1 process"] = lambda s, d: [[floor, "-U", s, d]]
            found["C floor, io_uring, %s processes" % n] = lambda s, d: [[floor, "-U", "-P", n, s, d]]
    return found


def ring_works(floor):
    """floor_copy -U: built with liburing, and io_uring allowed here (a one-file copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        with open(os.path.join(src, "f"), "wb") as f:
            f.write(b"x" * 100)
        done = subprocess.run([floor, "-U", src, os.path.join(tmp, "dst")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return done.returncode == 0 and same_contents(src, os.path.join(tmp, "dst"))


def run_once(argv_list, dst):
    shutil.rmtree(dst, ignore_errors=True)
    # No tool pays for the write-back of the one before it (on the disk): not timed.
    os.sync()
    t0 = time.perf_counter()
    for argv in argv_list:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def same_contents(src, dst):
    for folder, dirs, files in os.walk(src):
        for name in files:
            a = os.path.join(folder, name)
            b = os.path.join(dst, os.path.relpath(a, src))
            if os.path.islink(a) or not os.path.isfile(a):
                continue
            if not os.path.isfile(b) or os.path.getsize(a) != os.path.getsize(b):
                return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mpcp")
    ap.add_argument("--cfr", default=None,
                    help="the copy_file_range loop (default: bench/cfr_copy in mpcp's build)")
    ap.add_argument("--floor", default=None,
                    help="the least-work copier (default: bench/floor_copy in mpcp's build)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=None)
    ap.add_argument("--fs", default="tmpfs,disk")
    args = ap.parse_args()
    # MPCP is BUILD/tools/mpcp/mpcp
    build = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(args.mpcp))))
    if args.cfr is None:
        args.cfr = os.path.join(build, "bench", "cfr_copy")
    if args.floor is None:
        args.floor = os.path.join(build, "bench", "floor_copy")
    places = {"tmpfs": "/dev/shm/mproc-bench-copy",
              "disk": os.path.join(ROOT, "build-bench", "copy-bench")}
    for fs in args.fs.split(","):
        base = places[fs]
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        try:
            for name, make in DATASETS.items():
                if args.only and args.only != name:
                    continue
                src = os.path.join(base, "src")
                shutil.rmtree(src, ignore_errors=True)
                make(src)
                subprocess.run(["sh", "-c", 'find "$1" -type f -exec cat {} + >/dev/null', "warm", src])
                # Tools take turns within each round, so that all see the same noise.
                chosen = tools(args.mpcp, args.cfr, args.floor, name)
                samples = {tool: [] for tool in chosen}
                kept = []
                for r in range(args.rounds):
                    for i, (tool, argv) in enumerate(chosen.items()):
                        slow = tool.startswith("python") and name == SMALL
                        if slow and r > 0:
                            continue  # the tutorial's copier takes half a minute here: once
                        dst = os.path.join(base, "dst-%d-%d" % (r, i))
                        samples[tool].append(run_once(argv(src, dst), dst))
                        if r == 0 and not same_contents(src, dst):
                            sys.exit("bench copy: %s made a wrong copy of %s" % (tool, name))
                        # The 20,000-file copies stay until the dataset is done: ext4
                        # without a journal skips inodes freed in the last minute or
                        # more (recently_deleted), so a copy made right after another
                        # was deleted pays for that scan, more or less by luck.
                        if name == SMALL:
                            kept.append(dst)
                        else:
                            shutil.rmtree(dst, ignore_errors=True)
                for dst in kept:
                    shutil.rmtree(dst, ignore_errors=True)
                times = {tool: statistics.median(v) for tool, v in samples.items()}
                case = "%s %s" % (name, fs)
                for tool, t in times.items():
                    if tool == "mpcp -a":
                        continue
                    print(json.dumps({"bench": "copy", "case": case, "value": times["mpcp -a"],
                                      "unit": "s", "reference": tool, "reference_value": t}))
                    sys.stdout.flush()
                shutil.rmtree(src, ignore_errors=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
