#!/usr/bin/env python3
"""Checks the deployable package (dist/oauth-broker.zip, made by scripts/package) the way the Azure
Functions host will use it: the layout (host.json and <function>/function.json at the root, the
executable at defaultExecutablePath, integrations.json only if present, nothing else), the run bit
inside the zip, that the executable is a static x86-64 ELF (no PT_INTERP program header, no DT_NEEDED
entry), and that it starts from the unpacked folder and answers GET /api/health with 200, both
standalone (BROKER_PORT=0) and as the host starts it (FUNCTIONS_CUSTOMHANDLER_PORT).

Usage: python3 tests/package_layout.py [zip]      (default dist/oauth-broker.zip; run by scripts/check-package)
Standard library only.
"""

import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXECUTABLE = "oauth-broker"
STARTUP_TIMEOUT = 15.0

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklib import check, failures  # noqa: E402


def expected_entries():
    functions = sorted(
        name
        for name in os.listdir(os.path.join(ROOT, "functions"))
        if os.path.isfile(os.path.join(ROOT, "functions", name, "function.json"))
    )
    return {"host.json", EXECUTABLE} | {f"{name}/function.json" for name in functions}


# --- ELF -----------------------------------------------------------------------------------------

PT_DYNAMIC, PT_INTERP = 2, 3
DT_NULL, DT_NEEDED = 0, 1


def elf_facts(data):
    """(machine, type, has_interp, needed_count) of a little-endian ELF64 image."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    e_phoff = struct.unpack_from("<Q", data, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    has_interp, needed = False, 0
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == PT_INTERP:
            has_interp = True
        elif p_type == PT_DYNAMIC:
            for j in range(p_filesz // 16):
                d_tag, _val = struct.unpack_from("<qQ", data, p_offset + j * 16)
                if d_tag == DT_NULL:
                    break
                if d_tag == DT_NEEDED:
                    needed += 1
    return e_machine, e_type, has_interp, needed


# --- running it ----------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def settings_for(integrations_text):
    """Dummy values for every %NAME% the packaged integrations.json refers to."""
    names = set(re.findall(r'"%([^%"]+)%"', integrations_text or ""))
    return {name: f"dummy-{name.lower()}" for name in names}


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_and_probe(app_dir, work_dir, extra_env, label, port=None):
    """Starts the executable from app_dir; returns True when /api/health answered 200."""
    env = {
        "PATH": "/usr/bin:/bin",
        "BROKER_STORAGE": f"sqlite:{os.path.join(work_dir, label, 'broker.db')}",
        "RUST_LOG": "info",
    }
    env.update(extra_env)
    log_path = os.path.join(work_dir, f"{label}.log")
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [os.path.join(app_dir, EXECUTABLE)],
            cwd=app_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + STARTUP_TIMEOUT
        # Standalone with BROKER_PORT=0: the port comes from the `listening` log line.
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            with open(log_path, "rb") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("message") == "listening":
                        port = int(event["addr"].rsplit(":", 1)[1])
            time.sleep(0.02)
        status = None
        while port is not None and time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = http_get(f"http://127.0.0.1:{port}/api/health")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        elapsed = (time.monotonic() - started) * 1000
        ok = check(
            status == 200,
            f"{label}: starts from the unpacked package and GET /api/health answers 200"
            + (f" ({elapsed:.0f} ms after exec)" if status == 200 else f" (got {status})"),
        )
        if ok:
            check(json.loads(body).get("status") == "ok", f'{label}: health body is {{"status":"ok"}}')
        if not ok:
            with open(log_path, "r", errors="replace") as f:
                print(f.read()[-3000:])
        return ok
    finally:
        stop(proc)
        check(proc.returncode is not None, f"{label}: stopped by PID {proc.pid}")


def main():
    zip_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "dist", "oauth-broker.zip")
    if not os.path.isfile(zip_path):
        print(f"{zip_path} does not exist: run scripts/package first", file=sys.stderr)
        return 2
    print(f"checking {zip_path} ({os.path.getsize(zip_path)} bytes)")
    z = zipfile.ZipFile(zip_path)
    infos = {i.filename: i for i in z.infolist()}

    # Layout.
    expected = expected_entries()
    names = set(infos)
    extra = names - expected - {"integrations.json"}
    missing = expected - names
    check(not missing, f"has host.json, {EXECUTABLE} and every function's function.json at the root"
          + (f" (missing: {sorted(missing)})" if missing else ""))
    check(not extra, "has nothing else" + (f" (unexpected: {sorted(extra)})" if extra else ""))
    check(len(z.infolist()) == len(names), "has no duplicate entries")
    integrations_text = None
    if "integrations.json" in names:
        integrations_text = z.read("integrations.json").decode("utf-8")
        try:
            json.loads(integrations_text)
            check(True, "integrations.json is valid JSON")
        except ValueError as e:
            check(False, f"integrations.json is valid JSON ({e})")
    host = json.loads(z.read("host.json"))
    check(host["customHandler"]["description"]["defaultExecutablePath"] == EXECUTABLE,
          f"host.json's defaultExecutablePath is {EXECUTABLE}")
    for name in sorted(n for n in names if n.endswith("/function.json")):
        with open(os.path.join(ROOT, "functions", name), "rb") as f:
            check(z.read(name) == f.read(), f"{name} is functions/{name}")

    # Modes: the run bit on the executable (the host adds it only on Consumption plans).
    if EXECUTABLE in infos:
        info = infos[EXECUTABLE]
        mode = info.external_attr >> 16
        check(info.create_system == 3, f"{EXECUTABLE}'s entry records Unix attributes")
        check(stat.S_ISREG(mode) and mode & 0o777 == 0o755, f"{EXECUTABLE} is a regular file with mode 0755 (got {mode & 0o7777:o})")
    for name in names - {EXECUTABLE}:
        mode = infos[name].external_attr >> 16
        check(mode & 0o111 == 0, f"{name} is not executable")

    if failures or EXECUTABLE not in infos:
        return 1

    # A static x86-64 executable: runs on any Functions Linux image, whatever its glibc.
    data = z.read(EXECUTABLE)
    machine, etype, has_interp, needed = elf_facts(data)
    check(machine == 0x3E, "the executable is x86-64 ELF")
    check(etype in (2, 3), "the executable is an ELF executable (ET_EXEC or static-pie ET_DYN)")
    check(not has_interp, "the executable has no PT_INTERP (no dynamic loader)")
    check(needed == 0, f"the executable needs no shared library (DT_NEEDED entries: {needed})")

    # Unpack as the host does (modes from the zip) and run it.
    with tempfile.TemporaryDirectory(prefix="oauth-broker-package-") as tmp:
        app = os.path.join(tmp, "wwwroot")
        os.mkdir(app)
        for info in z.infolist():
            z.extract(info, app)
            os.chmod(os.path.join(app, info.filename), (info.external_attr >> 16) & 0o7777)
        env = settings_for(integrations_text)
        start_and_probe(app, tmp, dict(env, BROKER_PORT="0", BROKER_SWEEP_INTERVAL_SECS="0"), "standalone")
        port = free_port()
        start_and_probe(
            app,
            tmp,
            dict(env, FUNCTIONS_CUSTOMHANDLER_PORT=str(port), FUNCTIONS_CUSTOMHANDLER_WORKER_ID="package-test",
                 WEBSITE_HOSTNAME="package-test.azurewebsites.net"),
            "host-mode",
            port=port,
        )

    print(("FAILED: " + "; ".join(failures)) if failures else "package OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
