"""Shared by the offline check scripts: one `ok`/`FAIL` line per check, failures collected."""

failures = []


def check(ok, message):
    print(("ok   " if ok else "FAIL ") + message)
    if not ok:
        failures.append(message)
    return ok
