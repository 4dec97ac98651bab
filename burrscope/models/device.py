"""Where a model runs: the device, how inputs meet it there (mixed precision, memory layout), and CPU numerics."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from burrscope.errors import UserError
from burrscope.models.factory import Normalisation, standardise


class DeviceError(UserError):
    """The device asked for is not there."""


def select_device(preference: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "train.device is `cuda` but no CUDA device is visible to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
            "Set train.device to `auto` or `cpu`, or install a CUDA build of torch."
        )
    if preference == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Arithmetic that every x86-64 CPU of the last decade does alike. Left alone, torch's own kernels and oneDNN's
# convolutions pick the widest vector instructions a CPU offers (AVX-512 on many Intel chips, AVX2 on others), and
# each width adds floating-point numbers in another order: training diverges in the third decimal. MKL, which does
# the classifier layer's matrix products, also picks its code by the CPU's maker, even on its AVX2 branch; its
# COMPATIBLE branch computes alike on Intel and AMD CPUs (tests/test_reproducibility.py runs a fold on an emulated
# CPU of the other maker to check).
PORTABLE_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}


def pin_cpu_numerics(threads: int) -> str:
    """Make CPU arithmetic independent of the machine: `threads` intra-op threads (their number decides how sums
    are split) and AVX2 kernels; 0 leaves both to torch (every core, the widest instructions: faster, but results
    then depend on the machine). Returns the instruction set in use.

    The libraries read these settings at their first CPU operation, so call this before any: a process that
    already computed keeps what it had, which the returned capability shows.
    """
    if threads > 0:
        os.environ.update(PORTABLE_ISA)
        torch.set_num_threads(threads)
    return torch.backends.cpu.get_cpu_capability()


@dataclass(frozen=True)
class Runtime:
    """How inputs meet the model on a device: mixed precision (train.amp, CUDA only) and NHWC memory layout
    (train.channels_last)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, device: torch.device, amp: bool, channels_last: bool) -> Runtime:
        if device.type != "cuda":  # NHWC speeds CPU convolutions up too (oneDNN's blocked kernels), a third here
            return cls(device, None, channels_last)
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
        return cls(device, amp_dtype, channels_last)

    @property
    def eval_batch(self) -> int:
        """Images per forward pass without gradients. Large batches fill a GPU; on a CPU small ones keep the
        activations in its cache, which runs faster there."""
        return 128 if self.device.type == "cuda" else 16

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def unit(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 images, wherever they are, as floats in [0, 1] on the device."""
        return batch.to(self.device, non_blocking=True).float() / 255

    def inputs(self, batch: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
        """Float images in [0, 1] on the device -> the model's input."""
        batch = standardise(batch, normalisation)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model
