#!/usr/bin/env bash
# The oldest torch/torchvision that requirements.txt allows, tested (issue 20, part 3).
#
#   bash tools/test_oldest.sh              # build .venv-oldest if missing, run, write the result
#   bash tools/test_oldest.sh --rebuild    # start from a fresh .venv-oldest
#   CHAPTERS="01 02" bash tools/test_oldest.sh    # another subset of chapters
#   REV=main~3 bash tools/test_oldest.sh           # another commit (default HEAD)
#   MAXFAIL=10 CHAPTERS= bash tools/test_oldest.sh  # unit tests only, past unrelated failures
#                                                  # (keeps the chapters of the last result)
#
# Builds a second virtual environment, .venv-oldest, with the floor versions of
# requirements.txt (torch 2.1.0, torchvision 0.16.0; numpy < 2, which torch 2.1 was
# built against; every other requirement at its newest version compatible with
# them), runs the unit tests and a subset of chapters under nbval in it, and writes
# benchmarks/results/oldest-versions.json (versions, passed/failed counts, seconds).
# Exit status: 0 when everything passed.
#
# What is tested is a committed revision (REV, default HEAD), exported with git
# archive to runs/oldest/src and put first on PYTHONPATH, so that uncommitted edits
# in the working tree neither break nor flatter the run.
#
# The unit tests leave out tests/test_book.py and tests/test_editions.py (they render
# the site with jupyter-book, which does not exercise torch). PyPI's torch 2.1 wheels for Linux
# are the CUDA builds, so the install pulls the nvidia-* runtime wheels (~3 GB);
# they run on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv-oldest}
TORCH=${TORCH:-2.1.0}
TORCHVISION=${TORCHVISION:-0.16.0}
CHAPTERS=${CHAPTERS-"01 02 03 04 05"}
export MAXFAIL=${MAXFAIL:-1}  # 1 = -x: stop at the first failure (the run is CPU heavy)
OUT=${OUT:-$ROOT/benchmarks/results/oldest-versions.json}
LOGS=$ROOT/runs/oldest
REV=${REV:-HEAD}
SRC=$LOGS/src
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "--rebuild" ]]; then rm -rf "$VENV"; fi
mkdir -p "$LOGS"
start=$(date +%s)

# Re-resolve whenever the pins or REV's requirements.txt change (others add packages).
git show "$REV:requirements.txt" > "$LOGS/requirements.txt"
stamp="$TORCH-$TORCHVISION-$(sha1sum "$LOGS/requirements.txt" | cut -c1-12)"
if [[ ! -f "$VENV/.installed-$stamp" ]]; then
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The pins go on the same command line as -r requirements.txt, so pip resolves
    # every other package against them (matplotlib, pycocotools with numpy < 2).
    "$VENV/bin/python" -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION" \
        "numpy<2" -r "$LOGS/requirements.txt"
    rm -f "$VENV"/.installed-* && touch "$VENV/.installed-$stamp"
fi
installed=$(date +%s)
rm -rf "$SRC" && mkdir -p "$SRC"
git archive "$REV" | tar -x -C "$SRC"
commit=$(git rev-parse --short "$REV")
cd "$SRC"
export PYTHONPATH=$SRC

notebooks=()
for n in $CHAPTERS; do notebooks+=(book/${n}_*.ipynb); done

set +e
nice -n 10 "$VENV/bin/python" -m pytest tests --ignore=tests/test_book.py \
    --ignore=tests/test_editions.py -p no:randomly --maxfail="$MAXFAIL" -q \
    --junitxml="$LOGS/unit.xml" 2>&1 | tee "$LOGS/unit.log"
unit_rc=${PIPESTATUS[0]}
unit_done=$(date +%s)
nb_rc=
if (( ${#notebooks[@]} )); then
    nice -n 10 "$VENV/bin/python" -m pytest "${notebooks[@]}" --nbval-lax --nbval-current-env \
        --nbval-cell-timeout=600 -p no:randomly -q --junitxml="$LOGS/chapters.xml" 2>&1 \
        | tee "$LOGS/chapters.log"
    nb_rc=${PIPESTATUS[0]}
fi
set -e
end=$(date +%s)

"$VENV/bin/python" - "$OUT" "$LOGS" "$unit_rc" "${nb_rc:-none}" "$start" "$installed" "$unit_done" "$end" \
    "$commit" "${notebooks[@]}" <<'EOF'
import json, os, platform, sys, time
import xml.etree.ElementTree as ET
from importlib.metadata import version

out, logs, unit_rc, nb_rc, start, installed, unit_done, end, commit = sys.argv[1:10]
notebooks = sys.argv[10:]
maxfail = os.environ.get("MAXFAIL", "1")
previous_chapters = None  # no chapters this time: keep the last run's, which name their commit
if not notebooks and os.path.exists(out):
    previous = json.load(open(out))
    previous_chapters = previous.get("chapters")
    if previous_chapters:
        previous_chapters.setdefault("commit", previous.get("commit"))


def counts(path):
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"],
            "failed": n["failures"] + n["errors"], "skipped": n["skipped"], "failed_tests": failed}


result = {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "commit": commit,
    "python": platform.python_version(),
    "versions": {p: version(p) for p in ("torch", "torchvision", "numpy", "matplotlib",
                                         "pycocotools", "pillow", "nbval", "pytest")},
    "unit_tests": {"command": "pytest tests --ignore=tests/test_book.py "
                               f"--ignore=tests/test_editions.py -p no:randomly --maxfail={maxfail}",
                   "exit_status": int(unit_rc), **counts(f"{logs}/unit.xml"),
                   "seconds": int(unit_done) - int(installed)},
    "chapters": ({"command": "pytest --nbval-lax --nbval-current-env " + " ".join(notebooks),
                  "commit": commit, "exit_status": int(nb_rc), **counts(f"{logs}/chapters.xml"),
                  "seconds": int(end) - int(unit_done)} if notebooks else previous_chapters),
    "install_seconds": int(installed) - int(start),
    "note": "taken on a shared 2-core machine (other engineers running); --maxfail stops the "
            "unit tests after that many failures",
}
with open(out, "w") as f:
    json.dump(result, f, indent=1)
print(json.dumps(result, indent=1))
EOF
[[ $unit_rc == 0 && ${nb_rc:-0} == 0 ]]
