"""The one way the package compiles its CPU routines: numba's ``njit`` in four flavours, each
cached on disk. Imported only where numba is installed."""
import numba

#: a routine parallel over its ``prange`` loops (the entry points the package calls)
parallel = numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
#: a helper inlined into its callers (the inner loops the routines share)
inline = numba.njit(nogil=True, fastmath=True, cache=True, inline="always")
#: a serial helper with fast math that is called, not inlined (its branches are long)
helper = numba.njit(nogil=True, fastmath=True, cache=True)
#: a serial routine with exact arithmetic (sorts and counts)
serial = numba.njit(nogil=True, cache=True)
