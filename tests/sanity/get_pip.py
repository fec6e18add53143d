"""Offline stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test sanity builds one virtual environment per test and seeds it with pip by running
https://ci-files.testing.ansible.com/ansible-test/get-pip-<version>.py, a host this machine
cannot reach. It uses ~/.ansible/test/cache/get_pip_<version>.py when that file exists;
tests/run.sh puts this script there. It installs the pip bundled with Python (ensurepip,
no network), then asks that pip for what ansible-test asked for (pip==<version> from PyPI).
"""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main():
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + args)


if __name__ == "__main__":
    main()
