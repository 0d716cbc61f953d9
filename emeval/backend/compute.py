"""One lock for heavy torch work in this process.

Generation (the engine's worker thread) and judging (a judge's worker thread) run at the same
time during `emeval run`. Two threads each running multi-threaded matrix multiplies on the
same cores oversubscribe them, and OpenMP's spinning workers then slow both down several
times over; taking turns keeps every core busy with one job.
"""

import threading

TORCH_LOCK = threading.RLock()
