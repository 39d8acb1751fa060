import gc
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

# never reach for a hub or an account in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _room() -> tuple[float, float]:
    """GiB free under the temp dir and GiB of memory available (os.statvfs, not shutil.disk_usage, which some
    tests monkeypatch to fake a full disk)."""
    st = os.statvfs(tempfile.gettempdir())
    free = st.f_bavail * st.f_frsize / 2**30
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 2**20
    except (OSError, StopIteration):
        avail = float("nan")
    return free, avail


_LOWEST: dict = {}


def _watch_the_room():
    while True:
        test = os.environ.get("PYTEST_CURRENT_TEST", "collection").rsplit(" ", 1)[0]
        for name, value in zip(("disk", "memory"), _room()):
            if name not in _LOWEST or value < _LOWEST[name][0]:
                _LOWEST[name] = (value, test)
        time.sleep(1.0)


def pytest_sessionstart(session):
    threading.Thread(target=_watch_the_room, name="room", daemon=True).start()


def pytest_terminal_summary(terminalreporter):
    """The real-shape tests need ~9 GB of memory and write ~2 GB each under the temp dir: a run that fails for
    lack of either says so at the end of its log, even under -q (sampled every second, with the test then running)."""
    if len(_LOWEST) == 2:
        (disk, at_disk), (mem, at_mem) = _LOWEST["disk"], _LOWEST["memory"]
        terminalreporter.write_line(f"room: lowest {disk:.1f} GiB free under {tempfile.gettempdir()} (in "
                                    f"{at_disk}), lowest {mem:.1f} GiB memory available (in {at_mem})")


@pytest.fixture(autouse=True)
def _release_a_failed_test():
    """pytest keeps the last failure's traceback in sys.last_traceback until the next test's call phase, so a
    failed test holding GBs of weights would hold them through the next test's setup as well."""
    yield
    if getattr(sys, "last_traceback", None) is not None:
        sys.last_type = sys.last_value = sys.last_traceback = None
        gc.collect()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A tiny demo set in the GGT layout: 6 categories, 32x32 pairs."""
    from ggt_ir.data.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"), size=32, train_per_category=2, test_per_category=1)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; give every test a clean slate."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def local_only(monkeypatch):
    """Refuse every connection that does not go to 127.0.0.1 (the local test servers)."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network access to {address} attempted in a test")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
