"""Lints the lines changed since a base revision (`make lint`; CI runs it).

    python .ci/lint_changed.py [--base REV] [--ruff PATH] [--clang-format PATH]

C++ and CUDA files (.h .cpp .cu .cuh) are checked with clang-format (the repository's
.clang-format: Google style, 100 columns) on their changed lines only; Python files with
`ruff check` (pyproject.toml's [tool.ruff]), keeping the findings on changed lines. Changed
means: differing from the base in the working tree (committed, staged or not), or a new file
git does not ignore. Untouched lines of a touched file are not checked, so code written before
the formatter config never fails the check. The default base is the merge base with the
branch's upstream, or HEAD where there is none (a fresh clone of main: nothing changed, pass).
"""

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Set

CXX = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def default_base() -> str:
    try:
        return git("merge-base", "HEAD", "@{upstream}").strip()
    except subprocess.CalledProcessError:
        return "HEAD"


def changed_lines(base: str) -> Dict[str, Set[int]]:
    """File -> the line numbers (1-based, in the working tree) added or changed since base."""
    changed: Dict[str, Set[int]] = {}
    current = None
    for line in git("diff", "-U0", "--no-color", "--diff-filter=AMR", base).splitlines():
        if line.startswith("+++ "):
            current = line[6:] if line.startswith("+++ b/") else None
        elif line.startswith("@@") and current:
            start, _, count = re.match(r"@@ -\S+ \+(\d+)(,(\d+))? @@", line).groups()
            n = 1 if count is None else int(count)
            changed.setdefault(current, set()).update(range(int(start), int(start) + n))
    for path in git("ls-files", "--others", "--exclude-standard").splitlines():
        with open(path, "rb") as f:
            changed[path] = set(range(1, f.read().count(b"\n") + 2))
    return {p: lines for p, lines in changed.items() if lines and os.path.isfile(p)}


def ranges(lines: Set[int]) -> List[str]:
    out, ordered = [], sorted(lines)
    start = prev = ordered[0]
    for n in ordered[1:] + [None]:
        if n is None or n != prev + 1:
            out.append(f"{start}:{prev}")
            if n is not None:
                start = n
        if n is not None:
            prev = n
    return out


def check_cxx(files: Dict[str, Set[int]], clang_format: str) -> int:
    failures = 0
    for path, lines in sorted(files.items()):
        cmd = [clang_format, "--style=file", "--dry-run", "-Werror"]
        cmd += [f"--lines={r}" for r in ranges(lines)] + [path]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            failures += 1
            sys.stdout.write(out.stderr)
    return failures


def check_python(files: Dict[str, Set[int]], ruff: str) -> int:
    if not files:
        return 0
    out = subprocess.run([ruff, "check", "--output-format=json", "--force-exclude", *files],
                         capture_output=True, text=True)
    if out.returncode not in (0, 1):
        sys.stdout.write(out.stderr)
        return 1
    root = os.getcwd()
    failures = 0
    for finding in json.loads(out.stdout or "[]"):
        path = os.path.relpath(finding["filename"], root)
        if finding["location"]["row"] in files.get(path, ()):
            failures += 1
            print(f"{path}:{finding['location']['row']}:{finding['location']['column']}: "
                  f"{finding['code']} {finding['message']}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=None, help="default: merge base with the upstream")
    parser.add_argument("--ruff", default="ruff")
    parser.add_argument("--clang-format", default="clang-format")
    args = parser.parse_args()
    os.chdir(git("rev-parse", "--show-toplevel").strip())
    for tool in (args.ruff, args.clang_format):  # the tools must run even when nothing changed
        subprocess.run([tool, "--version"], capture_output=True, check=True)
    base = args.base or default_base()
    changed = changed_lines(base)
    cxx = {p: lines for p, lines in changed.items() if p.endswith(CXX)}
    python = {p: lines for p, lines in changed.items() if p.endswith(".py")}
    failures = check_cxx(cxx, args.clang_format) + check_python(python, args.ruff)
    print(f"lint: {len(cxx)} C++/CUDA and {len(python)} Python files changed since "
          f"{base[:12]}: {'clean' if failures == 0 else f'{failures} finding(s)'}"
          + ("" if failures == 0 else " (clang-format -i --lines=A:B FILE, or ruff check "
             "--fix FILE)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
