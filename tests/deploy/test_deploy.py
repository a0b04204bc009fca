#!/usr/bin/env python3
"""infra/deploy.sh end to end against recording fakes of the Azure CLI, curl and sleep
(tests/deploy/fake_cli.py): a first deployment, re-runs, a re-run after a failed deployment, a
soft-deleted vault, a vault whose key cannot be read, a package upload refused twice with 403, the
redacted answers of `az functionapp keys`, a region without Flex Consumption and a CLI that is too old.

Every scenario asserts from the recorded calls: the encryption key secret is written once in the
vault's life and never again; the function key stored in Key Vault is the one set on the app and is
not empty; no secret (encryption key, function key, client secret, access token) is on any recorded
command line or in the script's output; the health wait runs only after a successful upload.

Usage: python3 tests/deploy/test_deploy.py [-v]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT_SECRET = "acme-client-secret-Jx7Pq2Lm9Wv4"
PREFIX = "demo"
RG = "rg-broker"


def initial_state(**overrides):
    state = {
        "subscription": "00000000-0000-4000-8000-000000000001",
        "cli_version": "2.67.0",
        # As `az functionapp list-flexconsumption-locations --query "[].name"` answers.
        "flex_regions": ["eastus", "westeurope", "northeurope", "australiaeast"],
        "prefix": PREFIX,
        "suffix": "q3x7mbz2k4wte",
        "groups": {},
        "vaults": {},
        "deleted_vaults": {},
        "deployment": None,
        "deployments": [],
        "secret_writes": {},
        "tokens": [],
        "app": {"keys": {}, "settings_sets": 0},
        "upload_failures": [],
        "uploaded": False,
        "publish": [],
        "health": [],
    }
    state.update(overrides)
    return state


class Env:
    """A copy of the repository's infra/ with a package and an integrations file, and the fakes."""

    def __init__(self, state):
        self.dir = tempfile.mkdtemp(prefix="deploy-test-")
        self.repo = os.path.join(self.dir, "repo")
        shutil.copytree(os.path.join(ROOT, "infra"), os.path.join(self.repo, "infra"))
        with open(os.path.join(self.repo, "broker.zip"), "wb") as f:
            f.write(b"PK\x05\x06" + b"\0" * 18)
        with open(os.path.join(self.repo, "integrations.json"), "w") as f:
            json.dump({"integrations": {"acme": {"client_id": "%ACME_CLIENT_ID%", "client_secret": "%ACME_CLIENT_SECRET%"}}}, f)
        self.state_file = os.path.join(self.dir, "state.json")
        self.log_file = os.path.join(self.dir, "calls.jsonl")
        self.set_state(state)
        self.outputs = []

    def state(self):
        with open(self.state_file) as f:
            return json.load(f)

    def set_state(self, state):
        with open(self.state_file, "w") as f:
            json.dump(state, f)

    def update(self, **changes):
        s = self.state()
        s.update(changes)
        self.set_state(s)

    def calls(self):
        if not os.path.exists(self.log_file):
            return []
        with open(self.log_file) as f:
            return [json.loads(line) for line in f]

    def run(self, *extra, location="westeurope", extra_env=None, from_parent=False):
        start = len(self.calls())
        env = dict(os.environ, **(extra_env or {}))
        env.update({
            "PATH": os.path.join(HERE, "bin") + os.pathsep + env["PATH"],
            "FAKE_STATE": self.state_file,
            "FAKE_LOG": self.log_file,
            "ACME_CLIENT_ID": "acme-client-id-123",
            "ACME_CLIENT_SECRET": CLIENT_SECRET,
        })
        # Started from the repository, or from its parent with paths relative to there.
        at = "repo/" if from_parent else ""
        args = ["bash", f"{at}infra/deploy.sh", "-g", RG, "-l", location, "-p", PREFIX,
                "--integrations", f"{at}integrations.json", "--package", f"{at}broker.zip", *extra]
        r = subprocess.run(args, cwd=self.dir if from_parent else self.repo, env=env, capture_output=True,
                           text=True, timeout=120)
        self.outputs.append(r.stdout + r.stderr)
        return r, self.calls()[start:]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def az_calls(calls, *prefix):
    return [c for c in calls if c["tool"] == "az" and c["argv"][:len(prefix)] == list(prefix)]


def secret_puts(calls, name):
    return [c for c in az_calls(calls, "rest") if any(f"/secrets/{name}?" in a for a in c["argv"])]


class DeployTest(unittest.TestCase):
    def setUp(self):
        self.env = None

    def tearDown(self):
        if self.env:
            self.env.close()

    def start(self, **state):
        self.env = Env(initial_state(**state))
        return self.env

    # -- invariants checked after every run ---------------------------------------------------------

    def vault(self):
        s = self.env.state()
        (name, v), = [(n, v) for n, v in s["vaults"].items()]
        return name, v

    def assert_invariants(self):
        s = self.env.state()
        calls = self.env.calls()
        for vault, v in s["vaults"].items():
            writes = s["secret_writes"].get(f"{vault}/broker-encryption-keys", 0)
            self.assertLessEqual(writes, 1, "the encryption key secret was written more than once")
            if "broker-function-key" in v["secrets"]:
                stored = v["secrets"]["broker-function-key"][-1]
                self.assertTrue(stored, "the function key in Key Vault is empty")
                self.assertEqual(stored, s["app"]["keys"].get("adf"), "Key Vault and the app disagree on the function key")
        secrets_known = [CLIENT_SECRET, *s["tokens"], *s["app"]["keys"].values(),
                         *[c["client_secret"] for c in s.get("credentials", [])]]
        for v in list(s["vaults"].values()) + list(s["deleted_vaults"].values()):
            for name, values in v["secrets"].items():
                secrets_known += values
                if name == "broker-encryption-keys":
                    secrets_known += [k.split(":", 1)[1] for val in values for k in val.split(",")]
        for secret in filter(None, secrets_known):
            for c in calls:
                self.assertNotIn(secret, " ".join(c["argv"]), f"a secret is on the command line of {c['tool']} {c['argv'][:3]}")
            for output in self.env.outputs:
                self.assertNotIn(secret, output, "a secret is in the script's output")
        # Health polls only after a successful upload, within each run.
        seen_upload = False
        for c in calls:
            url = c["argv"][-1] if c["tool"] == "curl" else ""
            if "/api/publish" in url:
                seen_upload = True
            if url.endswith("/api/health"):
                self.assertTrue(seen_upload, "the health wait ran before an upload")
        for c in az_calls(calls, "functionapp", "keys"):
            self.fail(f"deploy.sh relies on az functionapp keys, whose values are redacted: {c['argv']}")

    def assert_success(self, r):
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assert_invariants()

    # -- scenarios ----------------------------------------------------------------------------------

    def test_first_deployment(self):
        env = self.start()
        r, calls = env.run()
        self.assert_success(r)
        name, v = self.vault()
        key = v["secrets"]["broker-encryption-keys"]
        self.assertEqual(len(key), 1)
        self.assertRegex(key[0], r"^k\d{8}:[A-Za-z0-9+/]{43}=$")
        self.assertEqual(len(secret_puts(calls, "broker-encryption-keys")), 1)
        # The template no longer takes the key; it got the documented memory default.
        self.assertNotIn("encryptionKeys", env.state()["deployments"][0])
        self.assertEqual(env.state()["deployments"][0]["instanceMemoryMB"], 2048)
        # The key was created after the deployment (the vault exists then), and the app's Key Vault
        # reference was re-set so it resolves.
        deployed = calls.index(az_calls(calls, "deployment", "group", "create")[0])
        key_written = calls.index(secret_puts(calls, "broker-encryption-keys")[0])
        uploaded = next(i for i, c in enumerate(calls) if c["tool"] == "curl" and "/api/publish" in c["argv"][-1])
        self.assertLess(deployed, key_written)
        self.assertLess(key_written, uploaded, "the key exists before the code can start")
        self.assertGreaterEqual(env.state()["app"]["settings_sets"], 1)
        # The function key: generated, set on the app through ARM, stored in Key Vault.
        adf = env.state()["app"]["keys"]["adf"]
        self.assertGreaterEqual(len(adf), 43)
        self.assertEqual(v["secrets"]["broker-function-key"], [adf])
        # The region was checked; the upload went to One Deploy once; the consent link is keyless.
        self.assertEqual(len(az_calls(calls, "functionapp", "list-flexconsumption-locations")), 1)
        self.assertEqual(env.state()["publish"], [202])
        out = r.stdout
        self.assertIn("acme: https://", out)
        self.assertIn("/api/auth/start/acme?link=cl_", out)
        self.assertNotIn("code=", out)
        self.assertIn(f"kv-{PREFIX}-", out)

    def test_a_pipeline_credential_per_connection_is_stored_in_key_vault_once(self):
        env = self.start()
        r, calls = env.run("--connection", "acme-eu")
        self.assert_success(r)
        creds = env.state()["credentials"]
        self.assertEqual([(c["integration"], c["connection"]) for c in creds], [("acme", "acme-eu")])
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-cred-acme-acme-eu"], [creds[0]["client_secret"]])
        self.assertIn(f"client id {creds[0]['client_id']}, secret broker-cred-acme-acme-eu (new)", r.stdout)
        posts = [c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith("/api/connections/acme/acme-eu/credentials")]
        self.assertEqual(len(posts), 1)
        # A re-run keeps the credential: no new one, the same secret in Key Vault, the client id shown.
        r, calls = env.run("--connection", "acme-eu")
        self.assert_success(r)
        self.assertEqual(len(env.state()["credentials"]), 1)
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-cred-acme-acme-eu"], [creds[0]["client_secret"]])
        self.assertIn(f"client id {creds[0]['client_id']}, secret broker-cred-acme-acme-eu (kept)", r.stdout)
        self.assertFalse([c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith("/credentials")])

    def test_rerun_keeps_the_key_and_the_function_key(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        _, v = self.vault()
        key, adf = v["secrets"]["broker-encryption-keys"][:], env.state()["app"]["keys"]["adf"]
        r, calls = env.run()
        self.assert_success(r)
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-encryption-keys"], key)
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])
        self.assertEqual(secret_puts(calls, "broker-function-key"), [], "a re-run keeps the function key")
        self.assertEqual(env.state()["app"]["keys"]["adf"], adf)
        self.assertIn("keeping the encryption keys", r.stderr)
        # The key's readability was checked without printing it.
        shows = az_calls(calls, "keyvault", "secret", "show")
        self.assertTrue(any("length(value)" in c["argv"] for c in shows))

    def test_rerun_after_a_failed_deployment_keeps_the_key(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        _, v = self.vault()
        key = v["secrets"]["broker-encryption-keys"][:]
        env.update(deploy_fails=True)
        r, _ = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Running infra/deploy.sh again is safe", r.stderr)
        self.assertIsNone(env.state()["deployment"]["outputs"], "the failed deployment has no outputs")
        r, calls = env.run()
        self.assert_success(r)
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-encryption-keys"], key)
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])

    def test_first_deployment_that_failed_then_succeeds_creates_the_key_once(self):
        env = self.start(deploy_fails=True)
        r, _ = env.run()
        self.assertNotEqual(r.returncode, 0)
        name, v = self.vault()
        self.assertNotIn("broker-encryption-keys", v["secrets"], "no key before a successful deployment")
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(len(secret_puts(calls, "broker-encryption-keys")), 1)

    def test_a_first_deployment_that_failed_before_the_role_applied_creates_the_key_once_after(self):
        # The failed deployment created the vault but not the deploying user's role; on the re-run the
        # deleted secrets cannot be listed until the new role applies (two refusals), then the key is
        # created, once.
        env = self.start(deploy_fails=True, role_delay_after_grant=2)
        r, _ = env.run()
        self.assertNotEqual(r.returncode, 0)
        r, calls = env.run()
        self.assert_success(r)
        listings = az_calls(calls, "keyvault", "secret", "list-deleted")
        self.assertEqual(len(listings), 3)
        self.assertEqual([c["argv"] for c in calls if c["tool"] == "sleep"][:2], [["30"], ["30"]])
        deployed = calls.index(az_calls(calls, "deployment", "group", "create")[0])
        self.assertLess(deployed, calls.index(listings[0]), "deleted secrets are listed after the role is granted")
        self.assertEqual(len(secret_puts(calls, "broker-encryption-keys")), 1)

    def test_a_deleted_key_secret_is_recovered_not_replaced(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        s = env.state()
        name, _ = self.vault()
        v = s["vaults"][name]
        key = v["secrets"]["broker-encryption-keys"][:]
        v["deleted_secrets"]["broker-encryption-keys"] = v["secrets"].pop("broker-encryption-keys")
        env.set_state(s)
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(len(az_calls(calls, "keyvault", "secret", "recover")), 1)
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-encryption-keys"], key)

    def test_a_soft_deleted_vault_is_recovered_with_its_key(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        s = env.state()
        name, v = self.vault()
        key = v["secrets"]["broker-encryption-keys"][:]
        s["deleted_vaults"][name] = s["vaults"].pop(name)
        env.set_state(s)
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(len(az_calls(calls, "keyvault", "recover")), 1)
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-encryption-keys"], key)
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])

    def test_a_soft_deleted_vault_that_cannot_be_recovered_stops_with_the_command(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        s = env.state()
        name, _ = self.vault()
        s["deleted_vaults"][name] = s["vaults"].pop(name)
        s["recover_fails"] = True
        env.set_state(s)
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"az keyvault recover --name {name} --location westeurope", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])
        self.assert_invariants()

    def test_a_vault_whose_key_cannot_be_read_stops_everything(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        env.update(data_plane_forbidden=True)
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot be read", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])
        self.assertEqual([c for c in calls if c["tool"] == "curl" and c["argv"] != ["--version"]], [], "nothing uploaded")
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])
        self.assert_invariants()

    def test_an_upload_refused_twice_with_403_is_retried_then_health_is_polled(self):
        env = self.start(upload_failures=[403, 403])
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(env.state()["publish"], [403, 403, 202])
        sleeps = [c["argv"] for c in calls if c["tool"] == "sleep"]
        self.assertEqual(sleeps[:2], [["15"], ["30"]], "backoff between upload attempts")
        curls = [c["argv"][-1] for c in calls if c["tool"] == "curl"]
        last_publish = max(i for i, u in enumerate(curls) if "/api/publish" in u)
        first_health = min(i for i, u in enumerate(curls) if u.endswith("/api/health"))
        self.assertLess(last_publish, first_health)
        self.assertEqual(env.state()["health"], [200])

    def test_an_upload_that_keeps_failing_stops_after_about_ten_minutes_of_backoff(self):
        env = self.start(upload_failures=[409] * 20)
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("still fails", r.stderr)
        self.assertEqual(env.state()["health"], [], "no health wait without an upload")
        waited = sum(int(c["argv"][0]) for c in calls if c["tool"] == "sleep")
        self.assertLessEqual(waited, 600)
        self.assertGreaterEqual(waited, 400)

    def test_redacted_function_keys_do_not_matter(self):
        # Even with an "adf" key already on the app (whose value az can no longer show), the key in
        # Key Vault is the one deploy.sh set.
        env = self.start(app={"keys": {"adf": "an-old-key-nobody-knows-9Fq2"}, "settings_sets": 0})
        r, calls = env.run()
        self.assert_success(r)
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-function-key"][-1], env.state()["app"]["keys"]["adf"])
        self.assertNotEqual(env.state()["app"]["keys"]["adf"], "an-old-key-nobody-knows-9Fq2")
        key_puts = [c for c in az_calls(calls, "rest") if "/host/default/functionKeys/adf?" in " ".join(c["argv"])]
        self.assertEqual(len(key_puts), 1)
        self.assertTrue(any(a.startswith("@") for a in key_puts[0]["argv"]), "the key goes in a body file")

    def test_files_are_relative_to_where_the_script_was_started(self):
        env = self.start()
        r, _ = env.run(from_parent=True)
        self.assert_success(r)
        self.assertEqual(env.state()["publish"], [202])
        self.assertIn("acme: https://", r.stdout)

    def test_a_region_given_by_display_name_is_recognised(self):
        env = self.start()
        r, _ = env.run(location="West Europe")
        self.assert_success(r)

    def test_a_region_without_flex_consumption_stops_before_anything_is_created(self):
        env = self.start()
        r, calls = env.run(location="brazilsoutheast")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not offer Flex Consumption", r.stderr)
        self.assertEqual(az_calls(calls, "group", "create"), [])

    def test_an_old_cli_is_refused(self):
        env = self.start(cli_version="2.59.9")
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("2.60.0 or later", r.stderr)
        self.assertEqual(az_calls(calls, "group", "create"), [])

    def test_an_old_curl_is_refused(self):
        env = self.start()
        r, calls = env.run(extra_env={"FAKE_CURL_VERSION": "7.54.1"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("7.55.0 or later", r.stderr)
        self.assertEqual(az_calls(calls, "group", "create"), [])

    def test_alert_email_reaches_the_template_and_a_bad_one_stops_before_anything(self):
        env = self.start()
        r, _ = env.run("--alert-email", "ops@example.com")
        self.assert_success(r)
        self.assertEqual(env.state()["deployments"][-1]["alertEmail"], "ops@example.com")
        r, _ = env.run()
        self.assert_success(r)
        self.assertEqual(env.state()["deployments"][-1]["alertEmail"], "", "no alerts unless asked")
        r, calls = env.run("--alert-email", "not an address")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--alert-email must be an e-mail address", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])

    def test_key_rotation_prepends_a_key(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        _, v = self.vault()
        old = v["secrets"]["broker-encryption-keys"][-1]
        r, _ = env.run("--rotate-encryption-key")
        self.assertEqual(r.returncode, 0, r.stderr)
        _, v = self.vault()
        new = v["secrets"]["broker-encryption-keys"][-1]
        self.assertTrue(new.endswith("," + old) and new.count(",") == 1, "the old key stays behind the new one")


def run_in_parallel():
    """Runs every scenario, a few at a time (each is its own temporary directory and fake state),
    and reports like unittest."""
    import concurrent.futures
    import time

    tests = list(unittest.defaultTestLoader.loadTestsFromTestCase(DeployTest))
    started = time.monotonic()

    def run_one(test):
        result = unittest.TestResult()
        test(result)
        return test, result

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        for test, result in pool.map(run_one, tests):
            problems = result.failures + result.errors
            print(("FAIL " if problems else "ok   ") + test.id().rsplit(".", 1)[-1], flush=True)
            for _, trace in problems:
                print(trace)
            failed += bool(problems)
    print(f"\nRan {len(tests)} tests in {time.monotonic() - started:.1f}s")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    # With arguments (e.g. -k upload, -v): unittest's own runner, one scenario at a time.
    sys.exit(unittest.main() if len(sys.argv) > 1 else run_in_parallel())
