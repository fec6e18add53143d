#!/usr/bin/env python3
"""`flask` command of the Dify STAND-IN image (a test double, not Dify).

Plays the two maintenance commands of Dify's api image that the dify role's day-2
playbooks call, on the stand-in's state in PostgreSQL:

  flask reset-password --email E --new-password P --password-confirm P
  flask reset-encrypt-key-pair --yes

Like Dify's, reset-password does NOT clear the login lockout (the playbook does that).
"""

import argparse
import glob
import os
import secrets
import sys

sys.path.insert(0, "/opt/standin")

from dify_standin.server import StandIn  # noqa: E402
from dify_standin.store import PgStore  # noqa: E402
from stack_standin import dsn  # noqa: E402

STORAGE = "/app/api/storage"


def reset_password(args):
    if args.new_password != args.password_confirm:
        print("Sorry, the two passwords do not match.")
        return 1
    store = PgStore(dsn())
    account = store.get("accounts", args.email.lower())
    if account is None:
        print("Account not found for email: %s" % args.email)
        return 1
    account["salt"] = secrets.token_hex(8)
    account["password"] = StandIn._hash(args.new_password, account["salt"])
    store.put("accounts", account["email"], account)
    print("Password reset successfully.")
    return 0


def reset_encrypt_key_pair(args):
    if not args.yes:
        print("Aborted: pass --yes")
        return 1
    store = PgStore(dsn())
    removed = 0
    for doc in store.list("model_credentials"):
        key = "%s|%s|%s" % (doc["provider"], doc["model_type"], doc["model"])
        if store.delete("model_credentials", key):
            removed += 1
    for path in glob.glob(os.path.join(STORAGE, "privkeys", "*", "private.pem")):
        os.remove(path)
    tenant = store.get("system", "tenant") or {"id": "?"}
    print("Congratulations! The asymmetric key pair of workspace %s has been reset "
          "(stand-in: %d model credentials deleted)." % (tenant["id"], removed))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="flask", description="flask CLI of the Dify stand-in (test double)")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("reset-password")
    rp.add_argument("--email", required=True)
    rp.add_argument("--new-password", required=True)
    rp.add_argument("--password-confirm", required=True)
    rk = sub.add_parser("reset-encrypt-key-pair")
    rk.add_argument("--yes", action="store_true")
    args = parser.parse_args(argv)
    return {"reset-password": reset_password, "reset-encrypt-key-pair": reset_encrypt_key_pair}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
