"""Developer entry point of the real-Dify harness (the tests start it themselves).

  PYTHONPATH=tests .venv/bin/python -m real_dify up      # start, print URLs, keep running until Ctrl-C
  PYTHONPATH=tests .venv/bin/python -m real_dify down    # kill what a crashed run left behind
  PYTHONPATH=tests .venv/bin/python -m real_dify prepare # only build the caches (source, venvs, models)
"""

import argparse
import signal
import sys
import threading

from .harness import CACHE, RealDify


def main(argv=None):
    p = argparse.ArgumentParser(prog="real_dify", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["up", "down", "prepare"])
    p.add_argument("--cache", default=CACHE)
    args = p.parse_args(argv)
    if args.command == "down":
        stopped = RealDify.stop_leftovers(args.cache)
        print("stopped: %s" % (", ".join(stopped) or "nothing was running"))
        return 0
    harness = RealDify(cache=args.cache)
    if args.command == "prepare":
        harness.prepare()
        return 0
    harness.start()
    print("Dify %s api: %s (public URL %s)" % (harness.version, harness.url, harness.public_url))
    print("plugin daemon stand-in: http://127.0.0.1:%d" % harness.ports["plugin_daemon"])
    print("logs: %s/*.log; Ctrl-C stops everything" % harness.run_dir)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    harness.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
