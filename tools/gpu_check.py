"""Every chapter, the unit tests and the benchmarks on a CUDA GPU, in about 9 minutes.

    python tools/gpu_check.py                   # on the GPU machine, from the repository root
    python tools/gpu_check.py --dry-run         # anywhere: one chapter, one test file, CPU ok
    python tools/gpu_check.py --fetch-wheels wheels/gpu --python-version 3.12
                                                # here, with a registry: wheels to carry there

Steps, each with a time limit cut to what is left of ``--budget`` (540 s), in this
order of importance:

1. Dependencies: imports every module the tests and chapters need; if some are
   missing, ``pip install``s requirements.txt (never torch/torchvision: the
   machine's CUDA build stays) from ``--wheels DIR`` when given (``--no-index``: a
   GPU machine without a registry needs a wheel folder carried along; make one
   with ``--fetch-wheels``; it leaves out numpy and pillow, which torchvision
   brings, to stay under the device tool's 64 MiB ``carry``), else from the
   configured index; where pip refuses an "externally managed" system Python it
   retries with ``--break-system-packages`` (a lent machine is thrown away after).
2. The unit tests (tests/, without test_book.py, which renders the site), CUDA
   tests included, started in the background on the second half of the CPU cores.
3. Every chapter under nbval (``--nbval-lax``, the README's test command), one
   at a time on the first half of the cores, each one's wall time recorded.
4. The benchmarks: ``benchmarks/batched_targets.py --device cuda``,
   ``benchmarks/train_vs_torchvision.py --device cuda`` (the demo recipe, the tiny
   config), ``benchmarks/roi_pool_triton.py`` (the Triton kernel vs torchvision's
   CUDA op) and ``benchmarks/run_all.py --device cuda --quick``.

Writes ``benchmarks/results/gpu-chapter-times.json`` and ``.md`` (each chapter's
GPU time next to its CPU time from ``book/_timings.json``, and whether nbval
passed), a ``"gpu"`` entry per chapter in ``book/_timings.json`` (the CPU table
of ``tools/book.py``; ``python tools/book.py tables`` renders both), the benchmark
JSON under ``benchmarks/results/``, and copies all of it with the logs to
``$OUT`` (the device tool brings back only that folder). ``--dry-run`` writes
only to ``$OUT`` (or ``runs/gpu-check``) and runs on the CPU when there is no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TIMINGS = ROOT / "book" / "_timings.json"
MODULES = ["torch", "torchvision", "numpy", "matplotlib", "PIL", "tqdm", "pycocotools", "ipywidgets",
           "bokeh", "yaml", "ipykernel", "nbformat", "nbclient", "pytest", "nbval"]
NOT_FROM_PIP = ("torch", "torchvision", "jupyter-book", "sphinx", "django-static-mathjax",
                "selenium")  # kept as installed / only for building the site


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command, *, timeout: float, log_path: Path, env=None, cores=None) -> dict:
    """Run ``command``, output to ``log_path``; ``{"exit_status", "seconds", "timed_out"}``."""
    if cores and shutil.which("taskset"):
        command = ["taskset", "-c", cores, *command]
    start = time.perf_counter()
    if timeout < 5:
        return {"exit_status": None, "seconds": 0.0, "timed_out": True, "skipped": "no time left"}
    with open(log_path, "w") as out:
        try:
            rc = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout, env=env).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    return {"exit_status": rc, "seconds": round(time.perf_counter() - start, 1),
            "timed_out": timed_out, "log": log_path.name}


def junit_counts(path: Path) -> dict:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"],
            "failed": n["failures"] + n["errors"], "skipped": n["skipped"], "failed_tests": failed}


def requirements() -> list:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [r for r in lines if r and not r.lower().startswith(NOT_FROM_PIP)]


def missing_modules(python: str) -> list:
    code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
            "if importlib.util.find_spec(m) is None))")
    out = subprocess.run([python, "-c", code, *MODULES], capture_output=True, text=True)
    return out.stdout.split()


def ensure_dependencies(args, out: Path, clock: Clock) -> dict:
    missing = missing_modules(sys.executable)
    result = {"missing_before": missing}
    if "torch" in missing or "torchvision" in missing:
        raise SystemExit("torch/torchvision are not installed here: install the machine's CUDA build "
                         "first (this script never installs torch, so as not to replace it).")
    if missing:
        command = [sys.executable, "-m", "pip", "install", "-q", *requirements()]
        if args.wheels:
            command[4:4] = ["--no-index", "--find-links", str(Path(args.wheels).resolve())]
        log(f"missing {missing}: {' '.join(command[:8])} ...")
        result["pip"] = run(command, timeout=min(180, clock.left()), log_path=out / "pip.log")
        if result["pip"]["exit_status"] != 0:  # e.g. an "externally managed" system Python
            command.insert(4, "--break-system-packages")
            result["pip_retry"] = run(command, timeout=min(180, clock.left()),
                                      log_path=out / "pip-retry.log")
        result["missing_after"] = missing_modules(sys.executable)
    return result


def fetch_wheels(directory: str, python_version: str) -> None:
    """Download (here, with a registry) the wheels that the GPU machine may lack."""
    command = [sys.executable, "-m", "pip", "download", "-q", "-d", directory, "--only-binary=:all:",
               "--python-version", python_version, "--platform", "manylinux2014_x86_64",
               "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
               *requirements()]
    subprocess.run(command, check=True)
    for wheel in Path(directory).glob("*.whl"):  # torchvision's own dependencies: already there
        if wheel.name.lower().startswith(("numpy-", "pillow-")):
            wheel.unlink()
    size = sum(f.stat().st_size for f in Path(directory).iterdir()) / 2 ** 20
    print(f"{directory}: {len(list(Path(directory).iterdir()))} wheels, {size:.0f} MiB "
          f"(the device tool carries at most 64 MiB: drop what the machine already has)")


def machine() -> dict:
    code = ("import json, os, platform, torch, torchvision; c = torch.cuda.is_available(); "
            "print(json.dumps({'cuda': c, 'gpu': torch.cuda.get_device_name(0) if c else None, "
            "'torch': torch.__version__, 'torchvision': torchvision.__version__, "
            "'python': platform.python_version(), 'cpus': os.cpu_count()}))")
    return json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))


def markdown_table(chapters: dict, info: dict) -> str:
    cpu = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    lines = [f"# Chapters on {info['gpu'] or 'CPU (dry run)'}", "",
             f"torch {info['torch']}, torchvision {info['torchvision']}, Python {info['python']}, "
             f"{info['cpus']} CPU cores; nbval --nbval-lax, wall time of each chapter alone "
             f"(the unit tests ran meanwhile on other cores). {info['date']}.", "",
             "| chapter | GPU s | CPU s (book/_timings.json) | nbval |", "|---|---:|---:|---|"]
    for name, r in chapters.items():
        c = cpu.get(name, {}).get("cpu", {}).get("seconds")
        verdict = ("skipped: no time left" if r.get("skipped") else "timed out" if r["timed_out"]
                   else "passed" if r["exit_status"] == 0 else f"FAILED ({r.get('failed', '?')} cells)")
        lines.append(f"| {name} | {r['seconds']:.1f} | {'' if c is None else f'{c:.1f}'} | {verdict} |")
    return "\n".join(lines) + "\n"


def record_gpu_timings(chapters: dict, info: dict) -> None:
    """Add a ``"gpu"`` entry per chapter to book/_timings.json (tools/book.py's format)."""
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    for name, r in chapters.items():
        if r["exit_status"] == 0:
            timings.setdefault(name, {})["gpu"] = {
                "seconds": r["seconds"], "device": "cuda", "machine": info["gpu"],
                "cpus": info["cpus"], "load_before": None, "date": info["date"][:10],
                "note": "nbval run by tools/gpu_check.py (not executed in place)"}
    TIMINGS.write_text(json.dumps(dict(sorted(timings.items())), indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="chapter 01 and tests/test_batched.py only")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for everything (default 540)")
    p.add_argument("--wheels", default=None, help="a folder of wheels to install missing packages from")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu-check"))
    p.add_argument("--fetch-wheels", default=None, metavar="DIR")
    p.add_argument("--python-version", default="3.12", help="for --fetch-wheels")
    args = p.parse_args(argv)
    if args.fetch_wheels:
        fetch_wheels(args.fetch_wheels, args.python_version)
        return 0
    clock = Clock(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dependencies": ensure_dependencies(args, out, clock)}
    info = machine()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["machine"] = info
    log(f"machine: {info}")
    if not info["cuda"] and not args.dry_run:
        raise SystemExit("no CUDA GPU here (torch.cuda.is_available() is False); use --dry-run.")
    device = "cuda" if info["cuda"] else "cpu"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               MPLBACKEND="agg")
    cpus = info["cpus"] or 2
    half = max(1, cpus // 2)
    fore, back = (f"0-{half - 1}", f"{half}-{cpus - 1}") if cpus >= 4 else (None, None)

    # 2. unit tests in the background
    tests = ["tests/test_batched.py"] if args.dry_run else ["tests", "--ignore=tests/test_book.py"]
    unit_cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:randomly", "-p",
                "no:cacheprovider", f"--junitxml={out / 'unit.xml'}"]
    if back and shutil.which("taskset"):
        unit_cmd = ["taskset", "-c", back, *unit_cmd]
    unit_env = dict(env, OMP_NUM_THREADS=str(max(1, cpus - half)))
    unit_log = open(out / "unit.log", "w")
    unit_start = time.perf_counter()
    unit = subprocess.Popen(unit_cmd, cwd=ROOT, stdout=unit_log, stderr=subprocess.STDOUT, env=unit_env)
    log(f"unit tests started: {' '.join(unit_cmd[-8:])}")

    # 3. every chapter, one at a time
    notebooks = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
    if args.dry_run:
        notebooks = notebooks[:1]
    chapters = {}
    for nb in notebooks:
        xml = out / f"nbval-{nb.stem}.xml"
        r = run([sys.executable, "-m", "pytest", str(nb.relative_to(ROOT)), "--nbval-lax",
                 "--nbval-current-env", "--nbval-cell-timeout=300", "-q", "-p", "no:randomly",
                 "-p", "no:cacheprovider", f"--junitxml={xml}"],
                timeout=min(300, clock.left() - 60), log_path=out / f"nbval-{nb.stem}.log",
                env=env, cores=fore)
        r.update({k: v for k, v in junit_counts(xml).items() if k in ("passed", "failed")})
        chapters[nb.stem] = r
        log(f"{nb.stem}: {r}")
    report["chapters"] = chapters

    # 4. benchmarks (what time is left)
    bench = {}
    bench_specs = [
        ("batched_targets", ["benchmarks/batched_targets.py", "--device", device, "--json",
                             str(out / f"batched-targets-{device}.json")]
         + (["--repeat", "1"] if args.dry_run else [])),
        ("train_vs_torchvision", ["benchmarks/train_vs_torchvision.py", "--device", device,
                                  "--json", str(out / f"train-vs-torchvision-{device}.json")]
         + (["--iterations", "2", "--num-images", "8", "--eval-images", "4"] if args.dry_run else [])),
        ("roi_pool_triton", ["benchmarks/roi_pool_triton.py", "--json",
                             str(out / f"roi-pool-triton-{device}.json")]),
        ("run_all", ["benchmarks/run_all.py", "--device", device, "--quick", "--note",
                     "tools/gpu_check.py", "--out", str(out / f"run-all-{device}.json")]),
    ]
    for name, cmd in bench_specs:
        if args.dry_run and name == "run_all":
            cmd = [*cmd, "--help"]  # the full run takes minutes on a CPU: check its arguments only
        bench[name] = run([sys.executable, *cmd], timeout=clock.left() - 15,
                          log_path=out / f"bench-{name}.log", env=env, cores=fore)
        log(f"{name}: {bench[name]}")
    report["benchmarks"] = bench

    remaining = max(1.0, clock.left())
    try:
        unit.wait(timeout=remaining)
        report["unit_tests"] = {"exit_status": unit.returncode, "timed_out": False}
    except subprocess.TimeoutExpired:
        unit.kill()
        report["unit_tests"] = {"exit_status": None, "timed_out": True}
    unit_log.close()
    report["unit_tests"].update(seconds=round(time.perf_counter() - unit_start, 1),
                                **junit_counts(out / "unit.xml"))
    log(f"unit tests: { {k: v for k, v in report['unit_tests'].items() if k != 'failed_tests'} }")

    # results
    report["seconds"] = round(args.budget - clock.left(), 1)
    (out / "gpu-chapter-times.json").write_text(json.dumps(report, indent=1))
    (out / "gpu-chapter-times.md").write_text(markdown_table(chapters, info))
    if info["cuda"] and not args.dry_run:
        for name in ("gpu-chapter-times.json", "gpu-chapter-times.md"):
            shutil.copy(out / name, RESULTS / name)
        for name in ("batched-targets-cuda.json", "train-vs-torchvision-cuda.json",
                     "roi-pool-triton-cuda.json"):
            if (out / name).exists():
                shutil.copy(out / name, RESULTS / name)
        if (out / "run-all-cuda.json").exists():
            slug = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")  # as run_all.py
            shutil.copy(out / "run-all-cuda.json", RESULTS / f"{slug}.json")
        record_gpu_timings(chapters, info)
        shutil.copy(TIMINGS, out / "_timings.json")
    print((out / "gpu-chapter-times.md").read_text())
    ok = (report["unit_tests"]["exit_status"] == 0 and all(r["exit_status"] == 0 for r in chapters.values())
          and all(b["exit_status"] == 0 for b in bench.values()))
    log(f"{'all passed' if ok else 'SOMETHING FAILED'}; results in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
