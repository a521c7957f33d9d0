"""bench/run slowfs: mpcp against cp -a and rsync -a onto and off a slow
filesystem: bench/slowfs, a FUSE passthrough of a tmpfs folder that answers
every request after a fixed delay (1 ms by default), with many threads, so
that requests in flight overlap as they do on a network filesystem. The
kernel caches as on NFS with actimeo=1 (see bench/slowfs.c).

Two datasets: 5,000 files of 4 KiB in 50 folders, 200 files of 1-8 MiB in 10
folders; two directions: tmpfs -> slowfs and slowfs -> tmpfs. Each round runs
every tool once, in turn, and each round starts one tool later than the last
(no tool always follows the same one); a figure is the median of the rounds.
Before every timed copy the page cache is written back and dropped (when the
run may: root), so that no copy finds the pages or the FUSE state the one
before it left: every copy starts cold, as a copy from a server does. Default mpcp -a, then mpcp -a -j N for the table of speed
against operations in flight. Each copy goes to a fresh destination, removed
(through the backing folder, not timed) after the round. The first copy of
every tool is checked (names, sizes, modes, mtimes).

usage: slowfs.py MPCP SLOWFS [--rounds N] [--delay-us US] [--jobs 1,2,4]
                 [--only small|large] [--dir onto|off]
Prints JSON lines: mpcp's seconds with each tool's seconds as the reference."""
import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SMALL = "5k x 4KiB"
LARGE = "200 x 1-8MiB"


def make_small(path):
    blob = os.urandom(4096)
    for d in range(50):
        folder = os.path.join(path, "d%02d" % d)
        os.makedirs(folder)
        for i in range(100):
            with open(os.path.join(folder, "f%04d" % i), "wb") as f:
                f.write(blob)


def make_large(path):
    rng = random.Random(13)
    blob = os.urandom(8 << 20)
    for i in range(200):
        folder = os.path.join(path, "d%02d" % (i % 10))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "f%03d" % i), "wb") as f:
            f.write(blob[: rng.randint(1 << 20, 8 << 20)])


def listing(root):
    out = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            st = os.lstat(os.path.join(d, n))
            out.append((os.path.relpath(os.path.join(d, n), root), st.st_size, st.st_mode,
                        st.st_mtime_ns if not os.path.isdir(os.path.join(d, n)) else 0))
    return sorted(out)


class Mount:
    """The slow filesystem, mounted for the run and always unmounted."""

    def __init__(self, slowfs, base, delay_us):
        self.back = os.path.join(base, "back")
        self.mnt = os.path.join(base, "mnt")
        os.makedirs(self.back)
        os.makedirs(self.mnt)
        self.proc = subprocess.Popen([slowfs, self.back, self.mnt, "-f",
                                      "--delay-us=%d" % delay_us])
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("slowfs did not mount %s" % self.mnt)
            time.sleep(0.05)

    def close(self):
        subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-uz", self.mnt], check=False)
            self.proc.kill()
            self.proc.wait()


def drop_caches():
    """Cold caches for the next copy; False where this run may not drop them."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def tools(mpcp, jobs, refs):
    t = [("cp -a", ["cp", "-a"]), ("rsync -a", ["rsync", "-a"])] if refs else []
    t.append(("mpcp -a", [mpcp, "-a"]))
    return t + [("mpcp -a -j %d" % j, [mpcp, "-a", "-j", str(j)]) for j in jobs]


def run(args):
    base = tempfile.mkdtemp(prefix="mpcp-slowfs-", dir="/dev/shm")
    mount = None
    try:
        mount = Mount(args.slowfs, base, args.delay_us)
        local = os.path.join(base, "local")
        os.makedirs(local)
        for name, make in ((SMALL, make_small), (LARGE, make_large)):
            tag = "small" if name == SMALL else "large"
            if args.only and args.only != tag:
                continue
            make(os.path.join(local, tag))          # the source on tmpfs
            make(os.path.join(mount.back, tag))     # the source on the slow fs
            for direction in ("onto", "off"):
                if args.dir and args.dir != direction:
                    continue
                src = os.path.join(local if direction == "onto" else mount.mnt, tag)
                dst_dir = mount.mnt if direction == "onto" else local
                dst_back = mount.back if direction == "onto" else local
                want = listing(os.path.join(local if direction == "onto" else mount.back, tag))
                secs = {}
                every = tools(args.mpcp, args.jobs, not args.no_refs)
                for r in range(args.rounds):
                    turn = every[r % len(every):] + every[:r % len(every)]
                    for k, (label, cmd) in enumerate(turn):
                        dst = "out-%s-%d-%d" % (tag, r, k)
                        if not drop_caches() and not args.warned:
                            print("# bench/slowfs.py: cannot drop the page cache (not root):"
                                  " copies may find what the one before left", file=sys.stderr)
                            args.warned = True
                        t0 = time.monotonic()
                        # rsync copies SRC/ into DST as cp copies SRC to a new DST.
                        first = src + "/" if cmd[0] == "rsync" else src
                        subprocess.run(cmd + [first, os.path.join(dst_dir, dst)], check=True)
                        secs.setdefault(label, []).append(time.monotonic() - t0)
                        got = listing(os.path.join(dst_back, dst)) if r == 0 else want
                        if got != want:
                            diff = sorted(set(got) ^ set(want))[:4]
                            raise RuntimeError("%s: the copy differs from the source: %s" % (label, diff))
                        shutil.rmtree(os.path.join(dst_back, dst))
                        print("# %s %s %s round %d: %.2f s" % (name, direction, label, r,
                                                             secs[label][-1]), file=sys.stderr)
                emit(name, direction, secs, args.delay_us, not args.warned)
            shutil.rmtree(os.path.join(local, tag))
            shutil.rmtree(os.path.join(mount.back, tag))
    finally:
        if mount:
            mount.close()
        shutil.rmtree(base, ignore_errors=True)


def emit(name, direction, secs, delay_us, cold):
    where = "tmpfs -> slowfs" if direction == "onto" else "slowfs -> tmpfs"
    ours = statistics.median(secs["mpcp -a"])
    for label, s in secs.items():
        med = statistics.median(s)
        print(json.dumps({"bench": "slowfs %s, %s (%d us a request)" % (name, where, delay_us),
                          "name": label, "value": round(med, 3), "unit": "s",
                          "reference": "mpcp -a", "reference_value": round(ours, 3),
                          "speedup": round(med / ours, 2), "rounds": len(s),
                          "cold_cache": cold}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mpcp")
    ap.add_argument("slowfs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay-us", type=int, default=1000)
    ap.add_argument("--jobs", default="1,2,4,8,16,32,64")
    ap.add_argument("--only", choices=["small", "large"])
    ap.add_argument("--dir", choices=["onto", "off"])
    ap.add_argument("--no-refs", action="store_true", help="mpcp only (not for the published table)")
    args = ap.parse_args()
    args.jobs = [int(j) for j in args.jobs.split(",") if j]
    args.warned = False
    # A kill of the run still unmounts (run's finally): no mount is left behind.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit("bench/slowfs.py: terminated"))
    for tool in ("cp", "rsync", "fusermount3"):
        if not shutil.which(tool):
            sys.exit("bench/slowfs.py: %s is missing (scripts/install-deps --bench)" % tool)
    run(args)


if __name__ == "__main__":
    main()
