"""Host memory for CPU runs: transparent huge pages for XLA's buffers.

XLA:CPU allocates each step's temporaries with malloc (1.7 GiB per step for the cpu-bench base
model). glibc serves blocks this large with fresh mmaps, so every step page-faults them in again,
4 KiB at a time. glibc's `glibc.malloc.hugetlb=1` tunable makes malloc madvise those mappings for
transparent huge pages (2 MiB pages), which the kernel grants in its default "madvise" mode: the
cpu-bench train step is about 5% faster with it (benchmarks/RESULTS.md). glibc reads tunables only
when a process starts, so the long-running entry points (muse-train, muse-demo, the benchmarks)
re-execute themselves once with it set, before any work is done.

Nothing changes where it cannot help: off Linux, with glibc older than 2.35, when the kernel's THP
mode is "always" (every mapping is already eligible) or "never", when GLIBC_TUNABLES already
names the tunable, or when MUSE_NO_HUGEPAGES=1 (to measure without it, or to debug the process
as started).
"""
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
DISABLE_ENV = "MUSE_NO_HUGEPAGES"
_THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = _THP_PATH) -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"), None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def _glibc_supports_hugetlb() -> bool:
  lib, version = platform.libc_ver()
  if lib != "glibc" or not version:
    return False
  major, minor = (int(x) for x in version.split(".")[:2])
  return (major, minor) >= (2, 35)


def hugepages_env(environ=None) -> dict | None:
  """The environment to re-execute with, or None when this process should run as it is."""
  environ = dict(os.environ if environ is None else environ)
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (environ.get(DISABLE_ENV, "") not in ("", "0") or TUNABLE in tunables
      or not sys.platform.startswith("linux") or not _glibc_supports_hugetlb()
      or thp_mode() != "madvise"):
    return None
  environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, f"{TUNABLE}=1") if t)
  return environ


def reexec_with_hugepages() -> None:
  """Replaces this process by the same command with `glibc.malloc.hugetlb=1`, if that helps.

  Call it first thing in a console entry point, before any work (the command line is replayed
  from sys.orig_argv, so the new process starts from the beginning).
  """
  env = hugepages_env()
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
