"""Memory probes for benchmarks: process peak RSS, CUDA peak allocation, and CPU tensor accounting.

- ``PeakRSS``: the process's peak resident set size during a block. On Linux the kernel's high-water
  mark (VmHWM) is reset on entry by writing 5 to /proc/self/clear_refs; elsewhere the block reports the
  lifetime peak (``ru_maxrss``) and says so (``resettable = False``).
- ``TensorPeak``: the peak bytes of tensor storage that ops allocate inside a block and that are still
  alive, counted op by op with a TorchDispatchMode (the CPU analogue of ``torch.cuda.max_memory_allocated``
  minus the allocation at entry). Storages that existed before the block (weights, prompt tokens, cached
  tree buffers) are not counted; scratch memory inside a single kernel is not visible. It slows the run
  down, so use it on untimed probe runs only. On CUDA, ``TensorPeak`` reads the allocator's own peak.
"""

from __future__ import annotations

import logging
import resource
import sys
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

logger = logging.getLogger(__name__)

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what its weights keep resident)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def tensors_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) dataclass, tuple, list or dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if hasattr(obj, "__dataclass_fields__"):
        return sum(tensors_bytes(getattr(obj, name)) for name in obj.__dataclass_fields__)
    if isinstance(obj, dict):
        return sum(tensors_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensors_bytes(v) for v in obj)
    return 0


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _vm_hwm() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _ru_maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class PeakRSS:
    """``with PeakRSS() as probe: ...`` then ``probe.peak`` holds the peak RSS (bytes) of the block."""

    def __init__(self) -> None:
        self.peak = 0
        self.resettable = False

    def __enter__(self) -> PeakRSS:
        try:
            _CLEAR_REFS.write_text("5")
            self.resettable = _vm_hwm() is not None
        except OSError:
            self.resettable = False
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        hwm = _vm_hwm() if self.resettable else None
        self.peak = hwm if hwm is not None else _ru_maxrss()


def _counted(tensor: torch.Tensor) -> bool:
    """A tensor with a storage to account (oneDNN's packed weights are opaque, and made at load)."""
    return tensor.layout != torch._mkldnn  # type: ignore[attr-defined]


class _StorageAccount(TorchDispatchMode):
    """Counts bytes of new storages created by ops, released when their last tensor wrapper dies."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}  # storage data_ptr -> live tensors that hold it
        self.sizes: dict[int, int] = {}  # storage data_ptr -> bytes
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and _counted(t)
        }
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, inputs)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        if not _counted(tensor):
            return
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0:
            return
        if ptr not in self.refs:
            if ptr in inputs:
                return  # a view of, or an in-place write to, a storage made before the block
            self.refs[ptr] = 0
            self.sizes[ptr] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self.refs[ptr] += 1
        weakref.finalize(tensor, self._release, ptr).atexit = False

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.current -= self.sizes.pop(ptr)


class TensorPeak:
    """``with TensorPeak(device) as probe: ...``, then ``probe.peak``: peak bytes allocated in the block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._account: _StorageAccount | None = None
        self._start = 0

    def __enter__(self) -> TensorPeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._account = _StorageAccount()
            self._account.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        assert self._account is not None
        self._account.__exit__(kind, err, tb)
        self.peak = self._account.peak
