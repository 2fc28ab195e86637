"""
Count a trial run: read trial's output file and print one line
"N passed, N failed, N skipped" from trial's closing summary, so CI can
count the run.  Exit status: trial's own (given as the first argument), or 1
if trial printed no summary at all.

Usage: python tools/trial_summary.py STATUS OUTPUT_FILE
"""

import re
import sys


def main() -> int:
    status = int(sys.argv[1])
    text = open(sys.argv[2], encoding="utf-8", errors="replace").read()
    counts = dict.fromkeys(("successes", "failures", "errors", "skips",
                            "expectedFailures", "unexpectedSuccesses"), 0)
    matches = re.findall(r"^(?:PASSED|FAILED) \(([^)]*)\)\s*$", text, re.M)
    if not matches:
        print("trial printed no summary: the run did not complete", file=sys.stderr)
        print("0 passed, 1 failed")
        return status or 1
    for key, value in re.findall(r"(\w+)=(\d+)", matches[-1]):
        counts[key] = int(value)
    passed = counts["successes"] + counts["expectedFailures"]
    failed = counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"]
    print(f"{passed} passed, {failed} failed, {counts['skips']} skipped")
    return status


if __name__ == "__main__":
    sys.exit(main())
