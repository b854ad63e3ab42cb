"""The main job's training speed alone and beside busy processes, with --threads 1, --threads N (all
cores) and no flag (the scripts choose the idle cores): iterations per second of `python training.py
--model lstm` (the README's main job) over its first --max_iters steps, each setting run --repeats
times, the range printed.

    python benchmarks/threads_busy.py [--busy 1] [--max_iters 60] [--repeats 2]
    python benchmarks/threads_busy.py --job "--model updown --features boxes ..." --threads unset
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def speed(threads, max_iters, out, job=("--model", "lstm")):
    """One run's training iterations per second (training.py prints them); job: its flags."""
    flags = [] if threads is None else ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, str(ROOT / "training.py"), *job, "--epochs", "1",
                             "--max_iters", str(max_iters), "--quiet", "--checkpoint", str(out / "b.npz"),
                             "--out_dir", str(out), *flags], capture_output=True, text=True, env=env,
                            check=True)
    chosen = re.search(r"^threads: (\d+)", result.stdout, re.M)
    return float(re.search(r"([\d.]+) training iterations per second", result.stdout).group(1)), \
        chosen and int(chosen.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the job (the loaded case)")
    p.add_argument("--max_iters", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--job", default="--model lstm",
                   help="the training flags measured (default: the main job's), e.g. '--model "
                        "updown --features boxes --hidden_dim 256 --wordvec_dim 128 "
                        "--attention_dim 128'")
    p.add_argument("--threads", nargs="+", default=None,
                   help="the settings to measure (default: 1, all cores, unset)")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"| machine | --threads | iterations per second (range of {args.repeats}) | chosen |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (0, args.busy):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                settings = ([None if t == "unset" else int(t) for t in args.threads]
                            if args.threads else (1, cores, None))
                for threads in settings:
                    runs = [speed(threads, args.max_iters, Path(tmp), args.job.split())
                            for _ in range(args.repeats)]
                    rates = [r for r, _ in runs]
                    chosen = {c for _, c in runs if c is not None}
                    print(f"| {'alone' if not busy else f'{busy} busy process(es)'} | "
                          f"{'unset' if threads is None else threads} | "
                          f"{min(rates):.1f}-{max(rates):.1f} | {', '.join(map(str, sorted(chosen)))} |",
                          flush=True)
            finally:
                for hog in hogs:
                    hog.kill()


if __name__ == "__main__":
    main()
