#!/usr/bin/env python3
"""bench/queue_large.py [N]   (default 100000)

A large deferred queue (issue 13, item 4): plants N deferred messages in a
fresh spool (copies of one the daemon deferred itself; see
tests/test_queue_large.py, which runs the same with 20,000 and asserts
bounds), then prints how long `postern queue list --json` takes and how
much memory it needs, how long the daemon takes to listen and to answer,
and its memory with the queue scheduled.

Run from the repository root as the tests are (root, peers started):
    POSTERN_BIN=$CARGO_TARGET_DIR/release/postern python3 bench/queue_large.py 100000
"""

import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from conftest import Daemon  # noqa: E402
from test_queue_large import BODY, measure  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    made = []
    with tempfile.TemporaryDirectory(prefix="postern-queue-large-") as tmp:

        def factory(name="d", start=True, **kw):
            d = Daemon(pathlib.Path(tmp) / name, **kw)
            made.append(d)
            if start:
                d.start()
            return d

        try:
            f = measure(factory, n)
        finally:
            for d in made:
                d.stop()
    print(f"deferred messages:        {f['n']} ({BODY} bytes of content each)")
    print(f"planting them:            {f['plant_s']:.1f} s")
    print(f"queue list --json:        {f['list_s']:.2f} s, peak RSS {f['list_rss_kib'] / 1024:.0f} MiB")
    print(f"daemon listening after:   {f['listen_s']:.2f} s")
    print(f"daemon answering after:   {f['answer_s']:.2f} s")
    print(f"first new mail delivered: {f['first_mail_s']:.2f} s after the start")
    print(f"daemon peak RSS:          {f['daemon_rss_kib'] / 1024:.0f} MiB "
          f"(one queued message: {f['baseline_rss_kib'] / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
