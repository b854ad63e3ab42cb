"""What the scripts share: one way to declare and check their flags (a table of Flag rows), flag
conventions, defaults and error reporting."""
import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
import traceback
from pathlib import Path

from core.util.errors import UserError


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help shows each flag's default, except where it is unset (None) or off (False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default in (None, False) or action.default == argparse.SUPPRESS
        if not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but --help shows the defaults and a bad flag is reported on one line of stderr
    (exit code 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        if is_main_process():  # under torchrun every rank parses the same flags: say it once
            sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of a script's table. type: int, float, str or bool (a switch); check: "positive",
    "fraction" ([0, 1)), "nonnegative" or None (a float must be finite whatever its check); fixed:
    (training.py) a resumed run must keep the value it was trained with; nargs: "+" for a list;
    required: the script needs it."""

    name: str
    type: object
    default: object
    help: str
    check: str = None
    fixed: bool = True
    choices: tuple = None
    metavar: str = None
    nargs: str = None
    required: bool = False


CHECKS = {"positive": (lambda v: v > 0, "positive"),
          "nonnegative": (lambda v: v >= 0, "nonnegative"),
          "fraction": (lambda v: 0 <= v < 1, "in [0, 1)")}


def flag_error(flag, value):
    """What is wrong with `value` for a Flag, or None: its check, its choices, and for a float NaN
    or inf (whatever its check)."""
    if value is None:
        return None
    ok, words = CHECKS.get(flag.check, (lambda v: True, None))
    if flag.type is float and not (math.isfinite(value) and ok(value)):
        signed = flag.check in ("positive", "nonnegative")
        words = f"{words} and finite" if signed else words or "finite"
        return f"--{flag.name} must be {words}, got {value}"
    if not ok(value):
        return f"--{flag.name} must be {words}, got {value}"
    if flag.choices is not None and value not in flag.choices:
        return f"--{flag.name} must be one of {', '.join(map(str, flag.choices))}, got {value!r}"
    return None


def flag_parser(prog, description, groups, flags, given_only=False):
    """The argument parser of a flag table: groups {title: flag names} lists every flag once, in
    --help's order (a title None: no heading); flags {name: Flag}. given_only: the namespace holds
    only the flags given (the script merges the defaults itself)."""
    p = ArgumentParser(prog=prog, description=description,
                       **({"argument_default": argparse.SUPPRESS} if given_only else {}))
    for title, names in groups.items():
        group = p if title is None else p.add_argument_group(title)
        for f in (flags[name] for name in names):
            text = f.help + ("" if f.default is None or f.default is False
                             else f" (default: {f.default})")
            options = {} if given_only else {"default": f.default}
            if f.type is bool:
                group.add_argument(f"--{f.name}", action="store_true", help=text, **options)
            else:
                group.add_argument(f"--{f.name}", type=f.type, choices=f.choices,
                                   metavar=f.metavar, nargs=f.nargs, required=f.required,
                                   help=text, **options)
    return p


def check_flags(parser, flags, values):
    """parser.error (one line, exit 2) for the first value of values {name: value} that its Flag's
    check refuses."""
    for name, value in values.items():
        problem = flag_error(flags[name], value) if name in flags else None
        if problem:
            parser.error(problem)


def is_main_process():
    """False in the processes of rank > 0 under torchrun, which leave printing to rank 0."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def user_errors(prog):
    """Turn a UserError raised inside the block into one line on stderr (from rank 0 only under
    torchrun, where every rank meets the same error) and exit code 2."""
    try:
        yield
    except UserError as e:
        if is_main_process():
            sys.stderr.write(f"{prog}: error: {e}\n")
        sys.exit(2)


@contextlib.contextmanager
def interrupts(prog, kept):
    """Ctrl-C (KeyboardInterrupt) inside the block: one line on stderr (rank 0 only) saying what was
    kept, and exit code 130, instead of a traceback. Writes are atomic, so nothing is
    half-written."""
    try:
        yield
    except KeyboardInterrupt:
        if is_main_process():
            sys.stderr.write(f"{prog}: stopped at once; {kept}\n")
        sys.exit(130)


def resolve_device(name):
    """--device value (None, "cpu", "cuda", "cuda:1") -> a torch device string; UserError when
    unavailable."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but PyTorch sees no CUDA device here: use "
                        f"--device cpu")
    try:
        torch.device(name)
    except RuntimeError:
        raise UserError(f'unknown --device "{name}": use cpu or cuda') from None
    return name


THREADS_HELP = ("CPU threads of numpy's BLAS and torch (unset: OMP_NUM_THREADS when set, which "
                "torchrun sets to 1 per process, else the cores idle when the script starts, at "
                "least 1; said in one line)")


def _proc_stat():
    """The text of /proc/stat (OSError where there is none)."""
    return Path("/proc/stat").read_text()


def _cpu_times(cpus):
    """(busy, total) jiffies of the given CPUs from /proc/stat; None where it cannot be read."""
    try:
        lines = _proc_stat().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle and iowait
            busy, total = busy + sum(values) - idle, total + sum(values)
    return busy, total


def idle_cores(seconds=0.1):
    """How many of this process's CPUs other processes leave idle, measured over `seconds` of
    /proc/stat -> float (0 .. the CPUs), or None where it cannot be read."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(
        os.cpu_count() or 1))
    first = _cpu_times(cpus)
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times(cpus)
    if second is None or second[1] <= first[1]:
        return None
    busy = (second[0] - first[0]) / (second[1] - first[1])  # the busy share of these CPUs
    return len(cpus) * (1 - busy)


def choose_threads(threads, log=print):
    """--threads N -> N; unset -> OMP_NUM_THREADS when set (torchrun sets 1 per process), else the
    CPUs idle when the script starts (at least 1; shared among torchrun's processes on this
    machine), said in one line -> the number of threads."""
    if threads is not None:
        return threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]):
        return int(os.environ["OMP_NUM_THREADS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    idle = idle_cores()
    free = cpus if idle is None else int(idle + 0.5)
    chosen = max(1, min(cpus, free) // processes)
    measured = (f"{free} of {cpus} cores idle at the start" if idle is not None
                else f"{cpus} cores, their load unknown")
    log(f"threads: {chosen}" + (f" per process of {processes}" if processes > 1 else "")
        + f" ({measured}; --threads N chooses)")
    return chosen


def limit_threads(threads):
    """Use at most `threads` CPU threads in numpy's BLAS (and any other threadpool threadpoolctl
    knows) and in torch -> the threadpoolctl limiter (whose restore_original_limits() undoes it);
    None: leave the libraries' defaults (one thread per core, or OMP_NUM_THREADS)."""
    if threads is None:
        return None
    import threadpoolctl
    import torch

    torch.set_num_threads(threads)
    return threadpoolctl.threadpool_limits(limits=threads)


def best_checkpoint_path(path):
    """rnn_checkpoint.npz -> rnn_checkpoint_best.npz"""
    path = Path(path)
    return path.with_name(f"{path.stem}_best{path.suffix}")


def last_checkpoint_path(path):
    """rnn_checkpoint.npz -> rnn_checkpoint_last.npz (the resumable state)"""
    path = Path(path)
    return path.with_name(f"{path.stem}_last{path.suffix}")


@contextlib.contextmanager
def out_of_memory_errors():
    """Running out of memory inside the block (numpy's MemoryError, torch's allocation failures on
    CPU or GPU) becomes a UserError that says what to make smaller; other errors pass."""
    import torch

    try:
        yield
    except MemoryError as e:
        raise UserError(f"out of memory ({e}): use a smaller model (--hidden_dim, --wordvec_dim, "
                        "--dim_feedforward), --batch_size or --num_samples") from None
    except RuntimeError as e:
        # torch.cuda.OutOfMemoryError exists in every torch this project allows
        # (torch.OutOfMemoryError
        # only in newer ones); a CPU allocation failure is a plain RuntimeError naming the
        # allocation
        if not isinstance(e, torch.cuda.OutOfMemoryError) and "allocate" not in str(e):
            raise
        raise UserError(f"out of memory ({str(e).splitlines()[0][:200]}): use a smaller model "
                        "(--wordvec_dim, --dim_feedforward, --num_layers) or "
                        "--batch_size") from None


def exit_after(main):
    """Run a script's main(); under torchrun, then end the process with os._exit once its output is
    flushed. torch 2.14's gloo threads can abort the interpreter's normal shutdown after all the
    work is done ("terminate called without an active exception", exit code -6, in about one run in
    four of a bare two-process all_reduce here), which torchrun reports as a failed run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return main()
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 (printed as Python would, then the same hard exit)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
