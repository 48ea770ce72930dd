"""muse_jax.hostenv: entry points re-execute with glibc.malloc.hugetlb=1, and it takes effect."""
import os
import subprocess
import sys

import pytest

from muse_jax import hostenv

_PROBE = r"""
import ctypes, os
from muse_jax import hostenv
hostenv.reexec_with_hugepages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20                                  # above glibc's mmap threshold: a fresh mapping
p = libc.malloc(n)
ctypes.memset(p, 1, n)
huge = [l for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
print(os.environ.get("GLIBC_TUNABLES", ""), int(huge[0].split()[1]) if huge else -1)
"""


def _probe(**env):
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                       env={**os.environ, **env}, timeout=120)
  tunables, huge_kib = out.stdout.split()[-2:] if len(out.stdout.split()) > 1 else ("", out.stdout)
  return tunables, int(huge_kib)


def test_environment_rules():
  if hostenv.hugepages_env({}) is None:
    pytest.skip(f"this host cannot use the tunable (THP mode {hostenv.thp_mode()!r})")
  env = hostenv.hugepages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hostenv.hugepages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert hostenv.hugepages_env({"MUSE_NO_HUGEPAGES": "1"}) is None


def test_reexec_gives_huge_pages():
  """The re-executed process has the tunable and its large mallocs are backed by huge pages;
  with MUSE_NO_HUGEPAGES=1 it runs as started, on small pages."""
  if hostenv.hugepages_env({}) is None:
    pytest.skip(f"this host cannot use the tunable (THP mode {hostenv.thp_mode()!r})")
  tunables, huge_kib = _probe()
  assert "glibc.malloc.hugetlb=1" in tunables
  assert huge_kib >= 32 << 10, f"only {huge_kib} KiB of the 64 MiB malloc is on huge pages"
  _, huge_off = _probe(MUSE_NO_HUGEPAGES="1")
  assert huge_off < huge_kib
