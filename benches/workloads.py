"""Workloads for kiln's benchmarks, generated on demand under benches/work/ (never committed).

Each function lays out a build context (a directory with a Dockerfile) and returns its path. The
same contexts are given to every builder, so the comparison is like for like. Every Dockerfile
builds FROM `bench-busybox`, a base image each builder makes from Debian's busybox-static first
(nothing is downloaded).
"""

import os
import random
import shutil
import subprocess
from pathlib import Path

BASE_IMAGE = "bench-busybox"


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def busybox_base(work: Path) -> Path:
    """A context whose Dockerfile makes the busybox base image: FROM scratch + COPY of a rootfs."""
    ctx = _fresh(work / "busybox-base")
    rootfs = ctx / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    busybox = "/bin/busybox" if os.path.exists("/bin/busybox") else "/usr/bin/busybox"
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for d in ["etc", "tmp", "root", "var", "proc", "sys", "dev"]:
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    _write(rootfs / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(rootfs / "etc" / "group", "root:x:0:\n")
    _write(ctx / "Dockerfile", 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n')
    return ctx


def small_app(work: Path) -> Path:
    """A typical CI build: dependencies, then sources, a couple of RUN steps, metadata."""
    ctx = _fresh(work / "small-app")
    rng = random.Random(1)
    for i in range(40):
        _write(ctx / "src" / f"module{i}.txt", "".join(rng.choice("abcdef\n") for _ in range(4000)))
    _write(ctx / "deps.txt", "\n".join(f"dep-{i}==1.{i}" for i in range(30)) + "\n")
    _write(ctx / ".dockerignore", "*.log\n")
    _write(
        ctx / "Dockerfile",
        f"""FROM {BASE_IMAGE}
WORKDIR /app
COPY deps.txt .
RUN mkdir -p /opt/deps && for d in $(cat deps.txt); do echo "$d" > "/opt/deps/$d"; done
COPY src/ ./src/
RUN cat src/*.txt | wc -c > /app/size && ls src | wc -l > /app/count
ENV APP_ENV=production
EXPOSE 8080
CMD ["cat", "/app/size"]
""",
    )
    return ctx


def four_stages(work: Path) -> Path:
    """Four independent stages, each doing some CPU-bound work, and a final stage copying from all."""
    ctx = _fresh(work / "four-stages")
    stages = []
    for i in range(4):
        stages.append(
            f"FROM {BASE_IMAGE} AS s{i}\n"
            f"RUN i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done; echo {i} > /out{i}\n"
        )
    final = f"FROM {BASE_IMAGE}\n" + "".join(f"COPY --from=s{i} /out{i} /out{i}\n" for i in range(4))
    _write(ctx / "Dockerfile", "\n".join(stages) + final)
    return ctx


def many_files(work: Path, count: int = 20000) -> Path:
    """A context of `count` small files in 200 directories, copied whole."""
    ctx = _fresh(work / f"files-{count}")
    for i in range(count):
        _write(ctx / "tree" / f"d{i % 200}" / f"f{i}.txt", f"file {i}\n")
    _write(ctx / "Dockerfile", f"FROM {BASE_IMAGE}\nCOPY tree/ /tree/\nRUN ls -R /tree | wc -l > /count\n")
    return ctx


def many_files_ignored(work: Path, count: int = 20000) -> Path:
    """`many_files` with a `.dockerignore` whose patterns must be matched against every path (none of
    the 20,000 files is excluded, so the work stays the same as without it)."""
    target = work / f"files-{count}-ignored"
    if target.exists():
        shutil.rmtree(target)
    ctx = many_files(work, count).rename(target)
    _write(ctx / ".dockerignore", "**/*.tmp\nnode_modules\n!keep.tmp\n**/.cache\n")
    return ctx


def touch_one(ctx: Path, content: bool) -> None:
    """Changes one file of a many-files context: its content, or only its mtime."""
    target = ctx / "tree" / "d7" / "f7.txt"
    if content:
        target.write_text(target.read_text() + "changed\n")
    else:
        os.utime(target)


def big_layer(work: Path, megabytes: int = 500) -> Path:
    """One RUN writing `megabytes` of incompressible data: layer tar + compression cost."""
    ctx = _fresh(work / f"layer-{megabytes}m")
    _write(
        ctx / "Dockerfile",
        f"FROM {BASE_IMAGE}\nRUN dd if=/dev/urandom of=/big bs=1M count={megabytes} 2>/dev/null\n",
    )
    return ctx


def many_layers(work: Path, layers: int = 70) -> Path:
    ctx = _fresh(work / f"layers-{layers}")
    lines = [f"FROM {BASE_IMAGE}"] + [f"RUN echo {i} > /layer{i}" for i in range(layers)]
    _write(ctx / "Dockerfile", "\n".join(lines) + "\n")
    return ctx


def run_steps(work: Path, steps: int) -> Path:
    """`steps` trivial RUN steps: per-step sandbox overhead."""
    ctx = _fresh(work / f"run-{steps}")
    lines = [f"FROM {BASE_IMAGE}"] + [f"RUN true # {i}" for i in range(steps)]
    _write(ctx / "Dockerfile", "\n".join(lines) + "\n")
    return ctx


def big_context(work: Path, megabytes: int = 1024) -> Path:
    """A context of `megabytes` in 64 MiB files (incompressible), copied whole: memory must not grow
    with it."""
    ctx = _fresh(work / f"context-{megabytes}m")
    (ctx / "data").mkdir()
    chunk = 64
    for i in range(max(1, megabytes // chunk)):
        with open(ctx / "data" / f"blob{i}", "wb") as f:
            for _ in range(chunk):
                f.write(os.urandom(1 << 20))
    _write(ctx / "Dockerfile", f"FROM {BASE_IMAGE}\nCOPY data/ /data/\n")
    return ctx


def five_layer_image(work: Path, megabytes: int = 200) -> Path:
    """An image of five layers of incompressible data (`megabytes` in all), each from its own COPY:
    the registry push/pull workload."""
    ctx = _fresh(work / f"five-layers-{megabytes}m")
    per_layer = max(1, megabytes // 5)
    lines = ["FROM scratch"]
    for i in range(5):
        with open(ctx / f"part{i}.bin", "wb") as f:
            for _ in range(per_layer):
                f.write(os.urandom(1 << 20))
        lines.append(f"COPY part{i}.bin /data/part{i}.bin")
    _write(ctx / "Dockerfile", "\n".join(lines) + "\n")
    return ctx
