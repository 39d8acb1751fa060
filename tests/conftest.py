import os
import socket
import sys
from pathlib import Path

import pytest

# never reach for a hub or an account in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


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
