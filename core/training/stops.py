"""Clean stops: while a long job runs, Ctrl-C (SIGINT) and SIGTERM (a preempted job) ask it to stop
at the next safe point instead of killing it; a second signal stops at once."""
import contextlib
import signal
import threading


class StopRequest:
    """reason: None until a stop is asked for, then the signal's name (or why another process
    stopped)."""

    def __init__(self):
        self.reason = None

    def __bool__(self):
        return self.reason is not None


@contextlib.contextmanager
def clean_stops(verbose=True):
    """Within the block, SIGINT and SIGTERM set the yielded StopRequest (printing one line when
    verbose); a second one raises KeyboardInterrupt. Off the main thread, where Python cannot
    handle signals, the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request:
            raise KeyboardInterrupt
        request.reason = signal.Signals(signum).name
        if verbose:
            print(f"\n{request.reason}: stopping after the current step (again to stop at once)",
                  flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
