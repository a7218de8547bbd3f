"""Orderly end of a distributed run.

mmengine initialises the process group but never destroys it. With the gloo backend on
recent PyTorch, letting the interpreter tear the group down at exit can abort a rank with
``terminate called without an active exception`` (its communication threads are still
joinable when their C++ destructors run), so a run that trained and saved everything
still exits with SIGABRT and ``torchrun`` reports a failure. The tools call
:func:`shutdown_distributed` once the runner is done.
"""
import torch.distributed as dist


def shutdown_distributed():
    """Wait for every rank, then destroy the default process group (no-op without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
