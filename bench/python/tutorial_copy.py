"""The tutorial's case study, as the reference the issue names: copy a
folder with multiprocessing.Pool(5), one apply_async() per file, and a
Manager().Queue() on which each task puts its file name, while the main
process prints a progress line. The tutorial copies one flat folder; to copy
the same trees as the other tools, this walks the tree and makes its folders
first, then copies every file the tutorial's way (read it whole, write it).

usage: tutorial_copy.py SRC DST"""
import multiprocessing
import os
import sys


def copy_file(q, old_path, new_path):
    with open(old_path, "rb") as old_file:
        content = old_file.read()
    with open(new_path, "wb") as new_file:
        new_file.write(content)
    q.put(old_path)


def main():
    old_folder, new_folder = sys.argv[1], sys.argv[2]
    jobs = []
    for folder, dirs, files in os.walk(old_folder):
        target = os.path.join(new_folder, os.path.relpath(folder, old_folder))
        os.makedirs(target, exist_ok=True)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                jobs.append((path, os.path.join(target, name)))
    pool = multiprocessing.Pool(5)
    q = multiprocessing.Manager().Queue()
    for old_path, new_path in jobs:
        pool.apply_async(copy_file, args=(q, old_path, new_path))
    pool.close()
    copied = 0
    while copied < len(jobs):
        q.get()
        copied += 1
        if copied % 1000 == 0 or copied == len(jobs):
            sys.stderr.write("\r Copy progress %.2f %%" % (copied * 100 / len(jobs)))
    pool.join()
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
