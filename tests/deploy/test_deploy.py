#!/usr/bin/env python3
"""infra/deploy.sh end to end against recording fakes of the Azure CLI, curl and sleep
(tests/deploy/fake_cli.py): a first deployment, re-runs, a re-run after a failed deployment, a
soft-deleted vault, a vault whose key cannot be read, a package upload refused twice with 403, an
upload whose deployment fails, a re-run whose deployment stays in progress, the redacted answers of
`az functionapp keys`, a subscription without the resource providers registered, a deployer without
subscription rights, user / service-principal / managed-identity logins, transient Key Vault errors,
a connection id with '.' and '_', Data Factory, private networking, a region without Flex
Consumption and a CLI that is too old.

Every scenario asserts from the recorded calls: the encryption key secret is written once in the
vault's life and never again; the function key stored in Key Vault is the one set on the token
functions (and is no host key); Key Vault Secrets User is granted only on single secrets; no secret
(encryption key, function key, host key, client secret, access token, consent link) is on any
recorded command line or in the script's output; the health wait runs only after a successful upload.

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
sys.path.insert(0, os.path.join(ROOT, "infra"))
from names import credential_secret_name  # noqa: E402

ALL_PROVIDERS = ["Microsoft.Web", "Microsoft.Storage", "Microsoft.KeyVault", "Microsoft.ManagedIdentity",
                 "Microsoft.OperationalInsights", "Microsoft.Insights", "Microsoft.Network", "Microsoft.App",
                 "Microsoft.DataFactory"]
OID = "11111111-2222-4333-8444-555555555555"
IDENTITY = "99999999-8888-4777-8666-555555555555"
ADF_PRINCIPAL = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
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
        "login": "user",
        "oid": OID,
        "identity_principal": IDENTITY,
        "providers": {ns: "Registered" for ns in ALL_PROVIDERS},
        "role_assignments": [],
        "factories": [{"rg": "rg-adf", "name": "adf-acme", "principal": ADF_PRINCIPAL}],
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

    def run(self, *extra, location="westeurope", extra_env=None, from_parent=False, timeout=120):
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
                           text=True, timeout=timeout)
        self.outputs.append(r.stdout + r.stderr)
        return r, self.calls()[start:]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def az_calls(calls, *prefix):
    return [c for c in calls if c["tool"] == "az" and c["argv"][:len(prefix)] == list(prefix)]


def opt_of(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


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
                # It exists before the code (BROKER_TOKEN_KEYS refers to it); once the token
                # functions have keys, theirs is the same.
                if s["app"].get("function_keys"):
                    for fn in ("token", "token-post"):
                        self.assertEqual(stored, s["app"].get("function_keys", {}).get(fn, {}).get("adf"),
                                         f"Key Vault and the function {fn} disagree on Data Factory's key")
                self.assertNotIn(stored, s["app"]["keys"].values(), "Data Factory's key is a host key (it opens every function)")
                self.assertNotIn("adf", s["app"]["keys"], "a host key adf is left (it opens every function)")
                others = [fn for fn, keys in s["app"].get("function_keys", {}).items()
                          if fn not in ("token", "token-post") and stored in keys.values()]
                self.assertEqual(others, [], "Data Factory's key opens a function other than the token functions")
        # Key Vault Secrets User only ever on single secrets (…/vaults/<v>/secrets/<name>).
        for ra in s["role_assignments"]:
            if ra["role"] == SECRETS_USER:
                self.assertRegex(ra["scope"], r"/providers/Microsoft\.KeyVault/vaults/[^/]+/secrets/[^/]+$",
                                 f"Key Vault Secrets User at a scope wider than a secret: {ra}")
        secrets_known = [CLIENT_SECRET, *s["tokens"], *s["app"]["keys"].values(), s["app"].get("master_key"),
                         *[k for keys in s["app"].get("function_keys", {}).values() for k in keys.values()],
                         *s.get("consent_links", []),
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
        for c in az_calls(calls, "ad"):
            self.fail(f"deploy.sh calls Microsoft Graph (empty under a managed-identity login): {c['argv']}")
        self.assertEqual(s.get("admin_refused", []), [], "an admin route was called without the admin key (BROKER_API_KEY)")
        # Data Factory never reads the admin key.
        for ra in s["role_assignments"]:
            if ra["principal"] == ADF_PRINCIPAL:
                self.assertFalse(ra["scope"].endswith("/secrets/broker-api-key"), "Data Factory may read the admin key")

    def consent_file(self):
        return os.path.join(self.env.repo, "dist", "consent-links.txt")

    def consent_links(self):
        with open(self.consent_file()) as f:
            return f.read()

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
        # The function key: generated, set on the token functions through ARM, stored in Key Vault.
        adf = env.state()["app"]["function_keys"]["token"]["adf"]
        self.assertGreaterEqual(len(adf), 43)
        self.assertEqual(v["secrets"]["broker-function-key"], [adf])
        self.assertEqual(sorted(env.state()["app"]["function_keys"]), ["token", "token-post"])
        # The region was checked; the upload went to One Deploy once; the consent link is keyless and
        # in a file only its owner can read, not in the output.
        self.assertEqual(len(az_calls(calls, "functionapp", "list-flexconsumption-locations")), 1)
        self.assertEqual(env.state()["publish"], [202])
        out = r.stdout
        self.assertIn(self.consent_file(), out)
        self.assertNotIn("/api/auth/start/", out + r.stderr)
        self.assertEqual(os.stat(self.consent_file()).st_mode & 0o777, 0o600)
        self.assertIn("acme/default: https://", self.consent_links())
        self.assertIn("/api/auth/start/acme?link=cl_", self.consent_links())
        self.assertNotIn("code=", self.consent_links())
        self.assertIn(f"kv-{PREFIX}-", out)
        # The app's identity may read exactly the encryption key, the client secret and the two keys
        # it checks itself (BROKER_API_KEY, BROKER_TOKEN_KEYS), each on its own.
        access = env.state()["access_deployments"]
        self.assertEqual([(a["principal"], sorted(a["secrets"])) for a in access],
                         [(IDENTITY, ["acme-client-secret", "broker-api-key", "broker-encryption-keys", "broker-function-key"])])
        granted = calls.index(az_calls(calls, "deployment", "group", "create")[1])
        self.assertLess(key_written, granted)
        self.assertLess(granted, uploaded, "the identity may read its secrets before the code starts")
        # The deployer's object id came from its token, as a User.
        self.assertEqual(env.state()["deployments"][0]["operatorPrincipalId"], OID)
        self.assertEqual(env.state()["deployments"][0]["operatorPrincipalType"], "User")

    def test_a_pipeline_credential_per_connection_is_stored_in_key_vault_once(self):
        env = self.start()
        r, calls = env.run("--connection", "acme-eu")
        self.assert_success(r)
        creds = env.state()["credentials"]
        self.assertEqual([(c["integration"], c["connection"]) for c in creds], [("acme", "acme-eu")])
        _, v = self.vault()
        name = credential_secret_name("acme", "acme-eu")
        self.assertEqual(v["secrets"][name], [creds[0]["client_secret"]])
        self.assertIn(f"client id {creds[0]['client_id']}, secret {name} (new)", r.stdout)
        posts = [c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith("/api/connections/acme/acme-eu/credentials")]
        self.assertEqual(len(posts), 1)
        # A re-run keeps the credential: no new one, the same secret in Key Vault, the client id shown.
        r, calls = env.run("--connection", "acme-eu")
        self.assert_success(r)
        self.assertEqual(len(env.state()["credentials"]), 1)
        _, v = self.vault()
        self.assertEqual(v["secrets"][name], [creds[0]["client_secret"]])
        self.assertIn(f"client id {creds[0]['client_id']}, secret {name} (kept)", r.stdout)
        self.assertFalse([c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith("/credentials")])

    def test_rerun_keeps_the_key_and_the_function_key(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        _, v = self.vault()
        key, adf = v["secrets"]["broker-encryption-keys"][:], env.state()["app"]["function_keys"]["token"]["adf"]
        r, calls = env.run()
        self.assert_success(r)
        _, v = self.vault()
        self.assertEqual(v["secrets"]["broker-encryption-keys"], key)
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])
        self.assertEqual(secret_puts(calls, "broker-function-key"), [], "a re-run keeps the function key")
        self.assertEqual(env.state()["app"]["function_keys"]["token"]["adf"], adf)
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

    def test_redacted_function_keys_and_an_old_host_key_adf(self):
        # An app deployed by an earlier version has a host key "adf" (whose value az can no longer
        # show, and which opens every function): it is deleted, and Data Factory's key is a function
        # key on the token functions, the one in Key Vault.
        env = self.start(app={"keys": {"adf": "an-old-key-nobody-knows-9Fq2"}, "settings_sets": 0})
        r, calls = env.run()
        self.assert_success(r)
        _, v = self.vault()
        app = env.state()["app"]
        self.assertNotIn("adf", app["keys"])
        self.assertEqual(v["secrets"]["broker-function-key"][-1], app["function_keys"]["token"]["adf"])
        self.assertEqual(v["secrets"]["broker-function-key"][-1], app["function_keys"]["token-post"]["adf"])
        key_puts = [c for c in az_calls(calls, "rest") if "/keys/adf?" in " ".join(c["argv"])]
        self.assertEqual(sorted(next(a for a in c["argv"] if "/functions/" in a).split("/functions/")[1].split("/")[0]
                                for c in key_puts), ["token", "token-post"])
        self.assertTrue(all(any(a.startswith("@") for a in c["argv"]) for c in key_puts), "the key goes in a body file")
        deletes = [c for c in az_calls(calls, "rest") if "delete" in c["argv"]]
        self.assertEqual(len(deletes), 1)
        self.assertIn("/host/default/functionKeys/adf?", " ".join(deletes[0]["argv"]))

    def test_files_are_relative_to_where_the_script_was_started(self):
        env = self.start()
        r, _ = env.run(from_parent=True)
        self.assert_success(r)
        self.assertEqual(env.state()["publish"], [202])
        self.assertIn("acme/default: https://", self.consent_links())

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
        self.assertFalse(env.state()["deployments"][-1]["privateNetwork"], "no private network unless asked")
        r, calls = env.run("--alert-email", "not an address")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--alert-email must be an e-mail address", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])

    # -- first-run and re-run traps (issue 19) ------------------------------------------------------

    def test_a_new_subscription_gets_the_providers_it_needs_registered_first(self):
        # Nothing registered: az functionapp list-flexconsumption-locations and az keyvault
        # list-deleted would fail (MissingSubscriptionRegistration) before any deployment.
        env = self.start(providers={})
        r, calls = env.run("--data-factory", "rg-adf/adf-acme")
        self.assert_success(r)
        registers = az_calls(calls, "provider", "register")
        self.assertTrue(all("--wait" in c["argv"] for c in registers), "registration is waited for")
        registered = [opt_of(c["argv"], "-n") for c in registers]
        self.assertEqual(sorted(registered), sorted(["Microsoft.Web", "Microsoft.Storage", "Microsoft.KeyVault",
                                                     "Microsoft.ManagedIdentity", "Microsoft.OperationalInsights",
                                                     "Microsoft.Insights", "Microsoft.DataFactory"]))
        first_command = calls.index(az_calls(calls, "functionapp", "list-flexconsumption-locations")[0])
        self.assertLess(max(calls.index(c) for c in registers), first_command)
        # A re-run registers nothing.
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(az_calls(calls, "provider", "register"), [])

    def test_a_deployer_without_subscription_rights_is_told_which_permission_is_missing(self):
        # Providers not registered and no right to register them: stop before creating anything.
        env = self.start(providers={"Microsoft.Web": "Registered"}, subscription_rights=False)
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Microsoft.Storage/register/action", r.stderr)
        self.assertIn("az provider register -n Microsoft.Storage --wait", r.stderr)
        self.assertEqual(az_calls(calls, "group", "create"), [])
        self.env.close()
        # Providers registered, rights on the resource group only: the soft-deleted vault lookup
        # fails, and the script stops naming the permission instead of colliding with a
        # purge-protected name later.
        env = self.start(subscription_rights=False)
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Microsoft.KeyVault/locations/deletedVaults/read", r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])
        self.assertEqual(env.state()["secret_writes"], {})
        self.assert_invariants()

    def test_an_upload_whose_deployment_fails_stops_with_its_status_and_log(self):
        env = self.start(deploy_outcomes=["fail"])
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("the deployment of the package failed: Deployment failed. The package could not be extracted", r.stderr)
        deployment = env.state()["kudu"][-1]["id"]
        self.assertIn(f"/api/deployments/{deployment}/log", r.stderr)
        self.assertEqual(env.state()["health"], [], "no health wait after a failed deployment")
        self.assertNotIn("is deployed", r.stdout)
        self.assertEqual(env.state()["app"].get("function_keys", {}), {})
        self.assert_invariants()
        # The next run deploys again and succeeds.
        r, _ = env.run()
        self.assert_success(r)

    def test_a_rerun_whose_deployment_stays_in_progress_is_not_reported_as_deployed(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        env.update(deploy_outcomes=["stuck"])
        r, calls = env.run(timeout=600)  # ten minutes of polls against the fakes
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("still in progress", r.stderr)
        self.assertIn("/api/deployments/", r.stderr)
        # The old code still answers /api/health, but the script never asked it this time.
        self.assertEqual([c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith("/api/health")], [])
        self.assertNotIn("is deployed", r.stdout)
        polls = [c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith("/api/deployments/latest")]
        self.assertGreaterEqual(len(polls), 30, "the deployment's status was polled for minutes")
        self.assert_invariants()

    def test_the_package_upload_uses_an_app_service_token(self):
        env = self.start()
        r, calls = env.run()
        self.assert_success(r)
        uploads = [c for c in calls if c["tool"] == "curl" and "/api/publish" in c["argv"][-1]]
        self.assertEqual(len(uploads), 1)
        tokens = az_calls(calls, "account", "get-access-token")
        self.assertTrue(any(opt_of(c["argv"], "--resource") == "https://appservice.azure.com" for c in tokens))
        # Where the CLI cannot issue that audience (Cloud Shell's identity), the script says how to log in.
        env.update(appservice_audience_unsupported=True)
        r, _ = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("az login --scope https://appservice.azure.com/.default", r.stderr)

    def test_service_principal_and_managed_identity_logins_get_the_officer_role(self):
        for login in ("sp", "mi"):
            with self.subTest(login=login):
                env = self.start(login=login, oid="22222222-3333-4444-8555-666666666666")
                r, calls = env.run()
                self.assert_success(r)
                d = env.state()["deployments"][0]
                self.assertEqual(d["operatorPrincipalId"], "22222222-3333-4444-8555-666666666666")
                self.assertEqual(d["operatorPrincipalType"], "ServicePrincipal")
                # The officer role let the re-run read the key: it is kept.
                r, calls = env.run()
                self.assert_success(r)
                self.assertIn("keeping the encryption keys", r.stderr)
                self.env.close()

    def test_transient_key_vault_errors_never_make_a_new_key(self):
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        # Two transient failures of the existence check: retried, the key is kept.
        env.update(arm_secret_errors=2)
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(secret_puts(calls, "broker-encryption-keys"), [])
        self.assertEqual(env.state()["arm_secret_errors_seen"], 2)
        # A lasting failure: the script stops and writes nothing.
        env.update(arm_secret_errors=50)
        r, calls = env.run()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("could not tell whether the secret broker-encryption-keys exists", r.stderr)
        self.assertEqual([c for c in az_calls(calls, "rest") if "put" in c["argv"]], [])
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])
        self.assert_invariants()

    def test_transient_errors_on_a_first_run_still_create_the_key_once(self):
        env = self.start(arm_secret_errors=3)
        r, calls = env.run()
        self.assert_success(r)
        self.assertEqual(len(secret_puts(calls, "broker-encryption-keys")), 1)

    def test_a_connection_id_with_dots_and_underscores_and_data_factory_reads_only_its_secrets(self):
        connection = "acme.eu_1"
        env = self.start()
        r, calls = env.run("--connection", connection, "--data-factory", "rg-adf/adf-acme")
        self.assert_success(r)
        name = credential_secret_name("acme", connection)
        self.assertRegex(name, r"^[0-9a-zA-Z-]{1,127}$")
        _, v = self.vault()
        cred = env.state()["credentials"][0]
        self.assertEqual((cred["integration"], cred["connection"]), ("acme", connection))
        self.assertEqual(v["secrets"][name], [cred["client_secret"]])
        self.assertIn(f"secret {name} (new)", r.stdout)
        # The rendered pipeline names the same secret, and the linked service reads its parameter.
        with open(os.path.join(env.repo, "dist", "adf", "pipeline", "PL_VendorApi_Paged.json")) as f:
            params = json.load(f)["properties"]["parameters"]
        self.assertEqual(params["credentialSecretName"]["defaultValue"], name)
        self.assertEqual(params["connection"]["defaultValue"], connection)
        self.assertEqual(params["integration"]["defaultValue"], "acme")
        ls = env.state()["adf_assets"]["linkedservices/LS_VendorApi_Broker"]
        self.assertEqual(ls["properties"]["typeProperties"]["clientSecret"]["secretName"]["value"],
                         "@linkedService().credentialSecretName")
        # The proxy's assets: rendered with the same secret name and imported, linked service first,
        # pointing at this app's proxy route with HTTP Basic (no token step in the pipeline).
        with open(os.path.join(env.repo, "dist", "adf", "pipeline", "PL_VendorApi_Proxy_Paged.json")) as f:
            proxy_pipeline = json.load(f)["properties"]
        params = proxy_pipeline["parameters"]
        self.assertEqual(params["credentialSecretName"]["defaultValue"], name)
        self.assertEqual((params["integration"]["defaultValue"], params["connection"]["defaultValue"]),
                         ("acme", connection))
        self.assertNotIn("AzureFunctionActivity", json.dumps(proxy_pipeline["activities"]))
        assets = env.state()["adf_assets"]
        self.assertEqual(assets["pipelines/PL_VendorApi_Proxy_Paged"]["properties"]["parameters"]["credentialSecretName"]
                         ["defaultValue"], name)
        self.assertIn("datasets/DS_VendorApi_Proxy", assets)
        proxy_ls = assets["linkedservices/LS_VendorApi_Proxy"]["properties"]["typeProperties"]
        self.assertEqual(proxy_ls["authenticationType"], "Basic")
        self.assertRegex(proxy_ls["url"], r"^https://[a-z0-9-]+\.azurewebsites\.net/api/proxy/@\{linkedService\(\)\.integration\}/@\{linkedService\(\)\.connection\}/$")
        self.assertEqual(proxy_ls["password"]["secretName"]["value"], "@linkedService().credentialSecretName")
        puts = [" ".join(c["argv"]) for c in az_calls(calls, "rest") if "Microsoft.DataFactory" in " ".join(c["argv"])]
        order = [next(i for i, p in enumerate(puts) if f"/{kind}/{n}?" in p)
                 for kind, n in (("linkedservices", "LS_BrokerKeyVault"), ("linkedservices", "LS_VendorApi_Proxy"),
                                 ("datasets", "DS_VendorApi_Proxy"), ("pipelines", "PL_VendorApi_Proxy_Paged"))]
        self.assertEqual(order, sorted(order), "Key Vault, linked service, dataset, pipeline: each after what it refers to")
        # Data Factory may read exactly its function key and this credential's secret.
        adf = [ra for ra in env.state()["role_assignments"] if ra["principal"] == ADF_PRINCIPAL]
        self.assertEqual(sorted(ra["scope"].rsplit("/secrets/", 1)[1] for ra in adf), sorted(["broker-function-key", name]))
        self.assertTrue(all(ra["role"] == SECRETS_USER for ra in adf))
        # The grant comes after the secrets exist (the fake fails it otherwise, as ARM does).
        # A second connection adds its secret; the first grant stays.
        r, _ = env.run("--connection", "Acme.EU_1", "--data-factory", "rg-adf/adf-acme")
        self.assert_success(r)
        second = credential_secret_name("acme", "Acme.EU_1")
        self.assertNotEqual(second.lower(), name.lower(), "Key Vault names are case-insensitive: no collision")
        adf = {ra["scope"].rsplit("/secrets/", 1)[1] for ra in env.state()["role_assignments"] if ra["principal"] == ADF_PRINCIPAL}
        self.assertEqual(adf, {"broker-function-key", name, second})

    def test_an_upgrade_removes_the_vault_wide_reads_of_earlier_versions(self):
        # Earlier versions granted the app's identity and Data Factory Secrets User on the whole vault;
        # a deployment does not remove what the template no longer declares, so deploy.sh does.
        env = self.start()
        r, _ = env.run()
        self.assert_success(r)
        s = env.state()
        name, _ = self.vault()
        vault_id = f"/subscriptions/{s['subscription']}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{name}"
        legacy = [{"name": f"legacy-{p}", "scope": vault_id, "principal": p, "role": SECRETS_USER}
                  for p in (IDENTITY, ADF_PRINCIPAL)]
        someone_else = {"name": "someone-else", "scope": vault_id, "principal": "cccccccc-0000-4000-8000-000000000003",
                        "role": SECRETS_USER}
        s["role_assignments"] += legacy + [someone_else]
        env.set_state(s)
        r, calls = env.run("--data-factory", "rg-adf/adf-acme")
        self.assertEqual(r.returncode, 0, r.stderr)
        left = {ra["name"] for ra in env.state()["role_assignments"] if ra["scope"] == vault_id}
        self.assertNotIn("legacy-" + IDENTITY, left)
        self.assertNotIn("legacy-" + ADF_PRINCIPAL, left)
        self.assertIn("someone-else", left, "only the broker's own principals lose their vault-wide role")
        self.assertEqual(len(az_calls(calls, "role", "assignment", "delete")), 2)
        # Removed only after the per-secret roles were granted.
        grants = [calls.index(c) for c in az_calls(calls, "deployment", "group", "create")]
        deletes = [calls.index(c) for c in az_calls(calls, "role", "assignment", "delete")]
        self.assertLess(grants[1], deletes[0])
        self.assertLess(grants[2], deletes[1])

    def test_a_bad_connection_id_stops_before_anything(self):
        env = self.start()
        r, calls = env.run("--connection", "a/b")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--connection must be", r.stderr)
        self.assertEqual(az_calls(calls, "group", "create"), [])

    def test_the_admin_routes_use_the_admin_key_data_factory_never_gets(self):
        env = self.start()
        r, calls = env.run("--data-factory", "rg-adf/adf-acme")
        self.assert_success(r)
        app = env.state()["app"]
        posts = [c for c in calls if c["tool"] == "curl" and c["argv"][-1].endswith(("/consent-link", "/credentials"))]
        self.assertEqual(len(posts), 2)
        self.assertEqual(env.state().get("admin_refused", []), [])
        secrets = self.vault()[1]["secrets"]
        admin, token = secrets["broker-api-key"], secrets["broker-function-key"]
        self.assertEqual(len(admin), 1, "the admin key is created once")
        self.assertNotEqual(admin[-1], token[-1], "the admin key and Data Factory's token key differ")
        self.assertNotIn(admin[-1], app["keys"].values(), "the admin key is no host key")
        # The app's identity reads both (its BROKER_API_KEY and BROKER_TOKEN_KEYS references), Data
        # Factory only its token key.
        broker = [ra["scope"].rsplit("/secrets/", 1)[1] for ra in env.state()["role_assignments"]
                  if ra["principal"] == IDENTITY and "/secrets/" in ra["scope"]]
        self.assertTrue({"broker-api-key", "broker-function-key"} <= set(broker), broker)
        # Both exist before the code is uploaded (its settings refer to them).
        upload = next(i for i, c in enumerate(calls) if c["tool"] == "curl" and "/api/publish" in c["argv"][-1])
        for name in ("broker-api-key", "broker-function-key"):
            put = next(i for i, c in enumerate(calls) if c in secret_puts(calls, name))
            self.assertLess(put, upload, f"{name} is written before the upload")
        # A re-run keeps it.
        r, calls = env.run("--data-factory", "rg-adf/adf-acme")
        self.assert_success(r)
        self.assertEqual(secret_puts(calls, "broker-api-key"), [])

    def test_adf_identity_access_adds_the_factory_to_callers_and_turns_entra_on(self):
        env = self.start()
        pkg = os.path.join(env.repo, "broker.zip")
        r, calls = env.run("--data-factory", "rg-adf/adf-acme", "--adf-identity-access", "acme/default")
        # The prebuilt package does not ship the new callers: stopped before anything is deployed, and
        # the integrations file now lists the factory.
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not ship the callers", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])
        with open(os.path.join(env.repo, "integrations.json")) as f:
            doc = json.load(f)
        self.assertEqual(doc["integrations"]["acme"]["callers"][0]["object_id"], ADF_PRINCIPAL)
        self.assertEqual(doc["integrations"]["acme"]["callers"][0]["connections"], ["default"])
        # A package built from that file: deployed, with Entra ID on for this tenant and the app's
        # identity as the audience, and the MSI pipeline rendered with it.
        import zipfile
        with zipfile.ZipFile(pkg, "w") as z:
            z.writestr("integrations.json", json.dumps(doc))
        r, calls = env.run("--data-factory", "rg-adf/adf-acme", "--adf-identity-access", "acme/default",
                           "--adf-identity-access", "acme/eu.1")
        self.assertNotEqual(r.returncode, 0, "a second connection changes the callers again")
        with open(os.path.join(env.repo, "integrations.json")) as f:
            doc = json.load(f)
        self.assertEqual(doc["integrations"]["acme"]["callers"], [{
            "object_id": ADF_PRINCIPAL, "connections": ["default", "eu.1"],
            "description": doc["integrations"]["acme"]["callers"][0]["description"]}], "one entry, merged")
        with zipfile.ZipFile(pkg, "w") as z:
            z.writestr("integrations.json", json.dumps(doc))
        r, calls = env.run("--data-factory", "rg-adf/adf-acme", "--adf-identity-access", "acme/default",
                           "--adf-identity-access", "acme/eu.1")
        self.assert_success(r)
        params = env.state()["deployments"][-1]
        self.assertEqual(params["entraTenantId"], "72f988bf-0000-4000-8000-000000000002")
        self.assertEqual(params["entraAudience"], "")
        with open(os.path.join(env.repo, "dist", "adf", "pipeline", "PL_BrokerToken_Web_MSI.json")) as f:
            msi = json.load(f)
        get = msi["properties"]["activities"][0]["typeProperties"]
        self.assertEqual(get["authentication"], {"type": "MSI", "resource": "cccccccc-1111-4222-8333-444444444444"})
        self.assertIn("https://demo-broker-", get["url"]["value"])
        # An app registration's audience instead.
        r, calls = env.run("--data-factory", "rg-adf/adf-acme", "--adf-identity-access", "acme/default",
                           "--adf-identity-access", "acme/eu.1", "--entra-audience", "api://oauth-broker-acme")
        self.assert_success(r)
        self.assertEqual(env.state()["deployments"][-1]["entraAudience"], "api://oauth-broker-acme")
        # Without Data Factory the flag is refused before anything.
        r, calls = env.run("--adf-identity-access", "acme/default")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("needs --data-factory", r.stderr)
        r, calls = env.run("--data-factory", "rg-adf/adf-acme", "--adf-identity-access", "nosuch/default")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("has no integration 'nosuch'", r.stderr)

    def test_private_network(self):
        env = self.start(providers={ns: "Registered" for ns in ALL_PROVIDERS if ns not in ("Microsoft.Network", "Microsoft.App")})
        r, calls = env.run("--private-network", "--data-factory", "rg-adf/adf-acme")
        self.assert_success(r)
        self.assertTrue(env.state()["deployments"][-1]["privateNetwork"])
        self.assertIn("Microsoft.Network", [opt_of(c["argv"], "-n") for c in az_calls(calls, "provider", "register")])
        self.assertIn("managed virtual network with a managed private endpoint", r.stdout)
        # A re-run from outside the network cannot read the key: it stops and changes nothing.
        r, calls = env.run("--private-network")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("reaches the vault's private endpoint", r.stderr)
        self.assertEqual(az_calls(calls, "deployment", "group", "create"), [])
        self.assert_invariants()

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
