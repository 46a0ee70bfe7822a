"""Packs and unpacks the GPU session's bundle (`cargo xtask gpu-bundle`, `session.sh`).

pack BUNDLE --program P --libdevice L --data D --file F...
    writes BUNDLE/smelt-gpu-check.xz, BUNDLE/data.tar.xz (D's node/, suites/ and models/),
    a copy of libdevice and of each F, and BUNDLE/MANIFEST.tsv (file, bytes, sha256);
unpack BUNDLE WORK
    checks every file against MANIFEST.tsv and unpacks the program and the data into WORK.

Only the standard library is used: the GPU machine has Python but nothing else of ours.
"""

import concurrent.futures
import hashlib
import lzma
import os
import shutil
import stat
import sys
import tarfile

PROGRAM = "smelt-gpu-check"
DATA_DIRS = ("node", "suites", "models")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compress_program(program, dest):
    with open(program, "rb") as src, lzma.open(dest, "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def compress_data(data, dest):
    with tarfile.open(dest, "w:xz", preset=6) as tar:
        for d in DATA_DIRS:
            tar.add(os.path.join(data, d), arcname=d)


def pack(bundle, program, libdevice, data, files):
    if os.path.isdir(bundle):
        shutil.rmtree(bundle)
    os.makedirs(bundle)
    # The two compressions are independent; each takes a core.
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(compress_program, program, os.path.join(bundle, PROGRAM + ".xz")),
                pool.submit(compress_data, data, os.path.join(bundle, "data.tar.xz"))]
        for j in jobs:
            j.result()
    shutil.copy(libdevice, os.path.join(bundle, "libdevice.10.bc"))
    for f in files:
        shutil.copy(f, os.path.join(bundle, os.path.basename(f)))
    names = sorted(n for n in os.listdir(bundle))
    with open(os.path.join(bundle, "MANIFEST.tsv"), "w") as m:
        for n in names:
            p = os.path.join(bundle, n)
            m.write(f"{n}\t{os.path.getsize(p)}\t{sha256(p)}\n")


def unpack(bundle, work):
    with open(os.path.join(bundle, "MANIFEST.tsv")) as m:
        for line in m:
            name, size, digest = line.rstrip("\n").split("\t")
            p = os.path.join(bundle, name)
            if os.path.getsize(p) != int(size) or sha256(p) != digest:
                sys.exit(f"{p} differs from the bundle's manifest (a broken transfer?)")
    os.makedirs(work, exist_ok=True)
    program = os.path.join(work, PROGRAM)
    with lzma.open(os.path.join(bundle, PROGRAM + ".xz"), "rb") as src, open(program, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(program, os.stat(program).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    with tarfile.open(os.path.join(bundle, "data.tar.xz"), "r:xz") as tar:
        try:
            tar.extractall(os.path.join(work, "data"), filter="data")
        except TypeError:  # a Python without extraction filters (before 3.11.4)
            tar.extractall(os.path.join(work, "data"))


def main(argv):
    if len(argv) >= 3 and argv[0] == "unpack":
        unpack(argv[1], argv[2])
        return 0
    if len(argv) >= 2 and argv[0] == "pack":
        bundle, opts, files = argv[1], {}, []
        rest = argv[2:]
        while rest:
            key, value, rest = rest[0], rest[1], rest[2:]
            if key == "--file":
                files.append(value)
            else:
                opts[key] = value
        pack(bundle, opts["--program"], opts["--libdevice"], opts["--data"], files)
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
