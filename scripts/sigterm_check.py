"""Send SIGTERM to `edgekit benchmark RELEASE --no-keras` at 10 moments in its first 10 s.

Each run must end within 10 s with exit code 143 and one line on stderr, no traceback
(issue 21's bar). Usage: python scripts/sigterm_check.py [RELEASE]  (default: a copy of exported/).
"""

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        release = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(scratch) / "exported"
        if len(sys.argv) == 1:
            shutil.copytree(ROOT / "exported", release)
        results = []
        for delay in (0.5 + step for step in range(10)):
            process = subprocess.Popen(
                [sys.executable, "-m", "edgekit.cli", "benchmark", str(release), "--no-keras"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            time.sleep(delay)
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
            seconds = time.monotonic() - sent
            lines = [line for line in stderr.splitlines()
                     if line.strip() and not line.startswith("INFO: Created TensorFlow Lite")]
            ok = (process.returncode == 143 and len(lines) == 1 and seconds < 10
                  and "Traceback" not in stderr)
            results.append(ok)
            print(f"SIGTERM after {delay:.1f} s: exit {process.returncode}, ended {seconds:.2f} s "
                  f"later, {len(lines)} line(s) on stderr {'ok' if ok else 'FAILED'}", flush=True)
    print(f"{sum(results)} of {len(results)} ok")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
