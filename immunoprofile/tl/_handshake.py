"""Two compiled threads meeting at every step: atomic flags for numba code.

The SOM's two halves (:mod:`immunoprofile.tl._som`) trade each step's nearest code through
shared memory: a thread publishes with a release store and reads the other's with acquire
loads, so everything written before the flag is visible after it. numba has no atomics on the
CPU; these intrinsics emit LLVM's atomic load and store (and libc's ``sched_yield``), which
numba can still cache on disk as they name no address.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def load_acquire(typingctx, array, index):
    """``array[index]`` read atomically, ordered before every later read."""
    def codegen(context, builder, signature, args):
        ty = signature.args[0]
        view = context.make_array(ty)(context, builder, args[0])
        at = cgutils.get_item_pointer(context, builder, ty, view, [args[1]])
        return builder.load_atomic(at, ordering="acquire", align=ty.dtype.bitwidth // 8)
    return array.dtype(array, index), codegen


@intrinsic
def store_release(typingctx, array, index, value):
    """``array[index] = value`` atomically, after every earlier write is visible."""
    def codegen(context, builder, signature, args):
        ty, _, value_ty = signature.args
        view = context.make_array(ty)(context, builder, args[0])
        at = cgutils.get_item_pointer(context, builder, ty, view, [args[1]])
        stored = context.cast(builder, args[2], value_ty, ty.dtype)
        builder.store_atomic(stored, at, ordering="release", align=ty.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


#: POSIX's sched_yield; Windows has none by that name, and there the loops train in one thread
#: (:func:`immunoprofile.tl._flowsom._som_threads`), so the call is left out.
CAN_YIELD = sys.platform != "win32"


@intrinsic
def _sched_yield(typingctx):
    def codegen(context, builder, signature, args):
        if not CAN_YIELD:
            return context.get_constant(types.int32, 0)
        call = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(call, [])
    return types.int32(), codegen


#: Checks of a flag before the waiting thread gives its core away (~1 µs of spinning): the
#: other thread is normally a step behind at most (~0.1 µs), but a core shared with other work
#: must not be held by a loop that waits for a thread that cannot run.
_SPINS = 2_000


@njit(cache=True, nogil=True, inline="always")
def wait_until(flags: np.ndarray, slot: int, value: int) -> None:
    """Return once ``flags[slot] >= value`` (acquire): the other thread's step is visible."""
    spins = 0
    while load_acquire(flags, slot) < value:
        spins += 1
        if spins == _SPINS:
            _sched_yield()
            spins = 0
