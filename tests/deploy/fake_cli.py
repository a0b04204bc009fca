#!/usr/bin/env python3
"""Recording fakes of the Azure CLI (`az`), `curl` (calls to the app and its SCM site) and `sleep`.

Azure cannot be reached from here, so infra/deploy.sh runs against these: every call is appended to
$FAKE_LOG as {"tool", "argv"} and answered from a scenario state ($FAKE_STATE, JSON) that persists
across calls and across runs of the script, like a resource group does. The answers follow the Azure
CLI's documented behaviour where it matters to the script:

- `az functionapp keys set/list` answer redacted values (Azure CLI PR #27611, issue #31991);
- `az deployment group show` of a failed deployment has no outputs; of a missing one exits 3;
- `az deployment group create` fails like ARM when a soft-deleted vault holds the name
  (ConflictError), and creates the vault otherwise (main.bicep's vault, with no secrets of its own);
- Key Vault data-plane calls (`az keyvault secret ...`) fail (Forbidden) until a successful
  deployment has granted the deploying user Key Vault Secrets Officer, and for a few more calls while
  that role assignment propagates (as RBAC does);
- One Deploy (`POST https://<scm>/api/publish`) answers the statuses the scenario lists, then 202,
  and requires `Authorization: Bearer <a token az issued>` (read from curl's -H @file);
- the app answers /api/health 200 only after a successful upload, and the consent-link route only
  with the function key set on the app.
"""

import json
import os
import re
import secrets
import sys

STATE = os.environ["FAKE_STATE"]
LOG = os.environ["FAKE_LOG"]


def load():
    with open(STATE, encoding="utf-8") as f:
        return json.load(f)


def save(state):
    with open(STATE, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)


def record(tool, argv):
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "argv": argv}) + "\n")


def opt(argv, *names, default=None):
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            return argv[i + 1]
    return default


def fail(message, code=1):
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(code)


def out(value, argv):
    """Print a value as `-o tsv` would (None → nothing), or JSON."""
    if opt(argv, "-o", "--output") == "none":
        return
    if opt(argv, "-o", "--output") == "tsv":
        if value is None:
            return
        if isinstance(value, list):
            for v in value:
                print(v)
        else:
            print(value)
    else:
        print(json.dumps(value))


def body_of(argv):
    body = opt(argv, "--body")
    if body and body.startswith("@"):
        with open(body[1:], encoding="utf-8") as f:
            return json.load(f)
    return json.loads(body) if body else None


def vault_name(state):
    return ("kv-" + state["prefix"] + "-" + state["suffix"])[:24]


def write_secret(state, vault, name, value):
    state["vaults"][vault]["secrets"].setdefault(name, []).append(value)
    key = f"{vault}/{name}"
    state["secret_writes"][key] = state["secret_writes"].get(key, 0) + 1


# --- az ------------------------------------------------------------------------------------------

# The commands deploy.sh may call and their options, as the Azure CLI reference documents them
# (learn.microsoft.com/cli/azure/<group>); an option not listed is refused as az's argument parser
# does ("unrecognized arguments"), so a misspelt option fails the scenarios.
GLOBAL_OPTIONS = {"--query", "-o", "--output", "--subscription", "--only-show-errors", "--debug", "--verbose"}
AZ_OPTIONS = {
    "version": set(),
    "account show": {"--name", "-n"},
    "account set": {"--name", "-n", "-s"},
    "account get-access-token": {"--resource", "--resource-type", "--scope", "--tenant", "-t"},
    "ad signed-in-user show": set(),
    "ad sp show": {"--id"},
    "functionapp list-flexconsumption-locations": {"--zone-redundant"},
    "group create": {"--name", "-n", "--resource-group", "-g", "--location", "-l", "--tags", "--managed-by"},
    "keyvault list": {"--resource-group", "-g", "--resource-type"},
    "keyvault list-deleted": {"--resource-type"},
    "keyvault recover": {"--name", "-n", "--hsm-name", "--location", "-l", "--resource-group", "-g", "--no-wait"},
    "keyvault show": {"--name", "-n", "--hsm-name", "--resource-group", "-g"},
    "keyvault secret show": {"--vault-name", "--name", "-n", "--id", "--version"},
    "keyvault secret list-deleted": {"--vault-name", "--id", "--maxresults"},
    "keyvault secret recover": {"--vault-name", "--name", "-n", "--id"},
    "keyvault secret set": {"--vault-name", "--name", "-n", "--value", "--file", "-f", "--encoding", "-e",
                            "--content-type", "--description", "--disabled", "--expires", "--not-before", "--tags"},
    "resource show": {"--ids", "--name", "-n", "--namespace", "--parent", "--resource-group", "-g",
                      "--resource-type", "--api-version", "--include-response-body"},
    "deployment group create": {"--resource-group", "-g", "--name", "-n", "--template-file", "-f", "--parameters",
                                "-p", "--mode", "--no-wait", "--what-if", "--rollback-on-error"},
    "deployment group show": {"--resource-group", "-g", "--name", "-n"},
    "rest": {"--method", "-m", "--url", "-u", "--uri", "--body", "-b", "--headers", "--resource", "--uri-parameters",
             "--skip-authorization-header", "--output-file"},
    "functionapp config appsettings set": {"--resource-group", "-g", "--name", "-n", "--settings",
                                           "--slot-settings", "--slot", "--ids"},
    "functionapp show": {"--resource-group", "-g", "--name", "-n", "--slot", "--ids"},
    "functionapp list": {"--resource-group", "-g"},
    "functionapp keys set": {"--resource-group", "-g", "--name", "-n", "--key-type", "--key-name", "--key-value", "--slot"},
    "functionapp keys list": {"--resource-group", "-g", "--name", "-n", "--slot"},
}


def check_options(argv):
    words = []
    for a in argv:
        if a.startswith("-"):
            break
        words.append(a)
    for n in range(len(words), 0, -1):
        command = " ".join(words[:n])
        if command in AZ_OPTIONS:
            allowed = AZ_OPTIONS[command] | GLOBAL_OPTIONS
            bad = [a for a in argv[n:] if a.startswith("-") and a not in allowed]
            if bad:
                fail(f"unrecognized arguments: {' '.join(bad)}", 2)
            return
    fail(f"'{' '.join(words)}' is not an az command deploy.sh is known to use", 2)


def az(argv):
    check_options(argv)
    state = load()
    words = [a for a in argv if not a.startswith("-")][:4]
    cmd = " ".join(words)
    sub = state["subscription"]
    rg = opt(argv, "-g", "--resource-group")

    if argv[:1] == ["version"]:
        return out(state["cli_version"], argv)
    if cmd.startswith("account show"):
        q = opt(argv, "--query")
        return out({"id": sub, "user.type": "user", "user.name": "ops@example.com"}.get(q, None) if q else {"id": sub}, argv)
    if cmd.startswith("account set"):
        return None
    if cmd.startswith("account get-access-token"):
        token = "eyJ0eXAi.fake-arm-token." + secrets.token_urlsafe(24)
        state["tokens"].append(token)
        save(state)
        return out(token, argv)
    if cmd.startswith("ad signed-in-user show"):
        return out("11111111-2222-4333-8444-555555555555", argv)
    if cmd.startswith("functionapp list-flexconsumption-locations"):
        return out(state["flex_regions"], argv)
    if cmd.startswith("group create"):
        state["groups"][opt(argv, "-n", "--name")] = opt(argv, "-l", "--location")
        save(state)
        return out(None, argv)

    if cmd.startswith("keyvault list-deleted"):
        return out([{"name": n, "properties": {"location": v["location"], "vaultId":
                    f"/subscriptions/{sub}/resourceGroups/{v['rg']}/providers/Microsoft.KeyVault/vaults/{n}"}}
                    for n, v in state["deleted_vaults"].items()], argv)
    if cmd.startswith("keyvault list"):
        m = re.search(r"starts_with\(name, '([^']*)'\)", opt(argv, "--query", default=""))
        names = [n for n, v in state["vaults"].items() if v["rg"] == rg and (not m or n.startswith(m.group(1)))]
        return out(names, argv)
    if cmd.startswith("keyvault recover"):
        name = opt(argv, "--name", "-n")
        if state.get("recover_fails") or name not in state["deleted_vaults"]:
            fail("(Forbidden) The client does not have authorization to perform action 'Microsoft.KeyVault/locations/deletedVaults/recover/action'")
        state["vaults"][name] = state["deleted_vaults"].pop(name)
        save(state)
        return out(None, argv)
    if cmd.startswith("keyvault show"):
        name = opt(argv, "-n", "--name")
        return out(f"https://{name}.vault.azure.net/", argv)
    if cmd.startswith("keyvault secret"):
        vault = opt(argv, "--vault-name")
        name = opt(argv, "-n", "--name")
        if vault not in state["vaults"]:
            fail(f"vault {vault} not found", 3)
        v = state["vaults"][vault]
        # Data-plane calls need Key Vault Secrets Officer: granted by a successful deployment
        # (operatorSecretsOfficer), applied only after `role_delay` more calls (RBAC propagation).
        if state.get("data_plane_forbidden") or not state.get("operator_role"):
            fail("(Forbidden) Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'")
        if state.get("role_delay"):
            state["role_delay"] -= 1
            save(state)
            fail("(Forbidden) Caller is not authorized to perform action on resource (role assignment not applied yet)")
        if cmd.startswith("keyvault secret show"):
            if name not in v["secrets"]:
                fail(f"(SecretNotFound) A secret with (name/id) {name} was not found in this key vault.", 3)
            value = v["secrets"][name][-1]
            q = opt(argv, "--query")
            if q == "contentType":
                return out(v.get("content_types", {}).get(name), argv)
            return out(len(value) if q == "length(value)" else value, argv)
        if cmd.startswith("keyvault secret list-deleted"):
            return out([f"https://{vault}.vault.azure.net/secrets/{n}" for n in v.get("deleted_secrets", {})], argv)
        if cmd.startswith("keyvault secret recover"):
            v["secrets"][name] = v["deleted_secrets"].pop(name)
            save(state)
            return out(None, argv)
        if cmd.startswith("keyvault secret set"):
            with open(opt(argv, "--file"), encoding="utf-8") as f:
                write_secret(state, vault, name, f.read())
            save(state)
            return out(None, argv)
    if cmd.startswith("resource show"):
        if opt(argv, "--namespace") == "Microsoft.KeyVault":
            vault = opt(argv, "--parent").split("/", 1)[1]
            name = opt(argv, "-n", "--name")
            if vault in state["vaults"] and name in state["vaults"][vault]["secrets"]:
                return out(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}/secrets/{name}", argv)
            fail(f"(ResourceNotFound) The Resource 'Microsoft.KeyVault/vaults/{vault}/secrets/{name}' was not found.", 3)
        fail("resource not found", 3)

    if cmd.startswith("deployment group create"):
        params_file = opt(argv, "-p", "--parameters")
        with open(params_file[1:], encoding="utf-8") as f:
            params = json.load(f)["parameters"]
        state["deployments"].append({k: v["value"] for k, v in params.items() if k != "integrationSecrets"})
        state["prefix"] = params["namePrefix"]["value"]
        name = vault_name(state)
        if name in state["deleted_vaults"] and name not in state["vaults"]:
            state["deployment"] = {"state": "Failed", "outputs": None}
            save(state)
            fail(f"(ConflictError) A vault with the same name already exists in deleted state. You need to either recover or purge existing key vault. Vault name: {name}")
        state["vaults"].setdefault(name, {"rg": rg, "location": params["location"]["value"], "secrets": {}, "deleted_secrets": {}})
        for k, value in params["integrationSecrets"]["value"].items():
            write_secret(state, name, k.lower().replace("_", "-"), value)
        if state.get("deploy_fails"):
            state["deploy_fails"] = False
            state["deployment"] = {"state": "Failed", "outputs": None}
            save(state)
            fail("(DeploymentFailed) At least one resource deployment operation failed.")
        if params["operatorPrincipalId"]["value"] and not state.get("operator_role"):
            state["operator_role"] = True
            state["role_delay"] = state.get("role_delay_after_grant", 0)
        app = f"{state['prefix']}-broker-{state['suffix'][:6]}"
        state["deployment"] = {"state": "Succeeded", "outputs": {
            "functionAppName": app, "functionAppHostName": f"{app}.azurewebsites.net",
            "publicUrl": f"https://{app}.azurewebsites.net", "redirectUri": f"https://{app}.azurewebsites.net/api/auth/callback",
            "keyVaultName": name, "keyVaultUri": f"https://{name}.vault.azure.net",
            "encryptionKeysSecretName": "broker-encryption-keys", "functionKeySecretName": "broker-function-key"}}
        state["app"]["name"] = app
        save(state)
        return out(None, argv)
    if cmd.startswith("deployment group show"):
        d = state.get("deployment")
        if not d:
            fail("(DeploymentNotFound) Deployment 'oauth-broker' could not be found.", 3)
        m = re.fullmatch(r"properties\.outputs\.(\w+)\.value", opt(argv, "--query", default=""))
        return out((d["outputs"] or {}).get(m.group(1)) if m else d, argv)

    if cmd.startswith("rest"):
        url = opt(argv, "--url")
        method = opt(argv, "--method", "-m")
        body = body_of(argv)
        m = re.search(r"/vaults/([^/]+)/secrets/([^/?]+)\?", url)
        if m and method == "put":
            write_secret(state, m.group(1), m.group(2), body["properties"]["value"])
            state["vaults"][m.group(1)].setdefault("content_types", {})[m.group(2)] = body["properties"].get("contentType")
            save(state)
            return out(None, argv)
        m = re.search(r"/sites/([^/]+)/host/default/functionKeys/([^/?]+)\?", url)
        if m and method == "put":
            state["app"]["keys"][m.group(2)] = body["properties"]["value"]
            save(state)
            return out(None, argv)
        fail(f"fake az rest: unexpected {method} {url}")

    if cmd.startswith("functionapp config appsettings set"):
        state["app"]["settings_sets"] += 1
        save(state)
        return out(None, argv)
    if cmd.startswith("functionapp keys"):
        # Since Azure CLI PR #27611 the values are redacted.
        if cmd.startswith("functionapp keys set"):
            return out("Keys have been redacted. Use `az functionapp keys list` to view." if "--query" in argv else {"name": opt(argv, "--key-name"), "value": None}, argv)
        return out({"functionKeys": {k: None for k in state["app"]["keys"]}, "masterKey": None}, argv)
    if cmd.startswith("functionapp show"):
        q = opt(argv, "--query", default="")
        app = opt(argv, "-n", "--name")
        if "Repository" in q:
            return out(f"{app}.scm.azurewebsites.net", argv)
        if q == "id":
            return out(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}", argv)
    if cmd.startswith("functionapp list"):
        return out(state["app"].get("name"), argv)
    fail(f"fake az: unexpected call: az {' '.join(argv)}", 2)


# --- curl ----------------------------------------------------------------------------------------


def curl(argv):
    if argv == ["--version"]:
        print(f"curl {os.environ.get('FAKE_CURL_VERSION', '8.14.1')} (x86_64-pc-linux-gnu) libcurl/8.14.1")
        return 0
    state = load()
    headers, out_file, write_out, data = [], None, None, None
    i, url = 0, None
    while i < len(argv):
        a = argv[i]
        if a == "-H":
            h = argv[i + 1]
            if h.startswith("@"):
                with open(h[1:], encoding="utf-8") as f:
                    headers += [line.strip() for line in f if line.strip()]
            else:
                headers.append(h)
            i += 2
        elif a in ("-o", "-w", "--data-binary", "-X", "--max-time"):
            if a == "-o":
                out_file = argv[i + 1]
            elif a == "-w":
                write_out = argv[i + 1]
            elif a == "--data-binary":
                data = argv[i + 1]
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            url = a
            i += 1
    header = {h.split(":", 1)[0].strip().lower(): h.split(":", 1)[1].strip() for h in headers if ":" in h}
    status, body = 404, "{}"
    if "/api/publish" in url:
        auth = header.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in state["tokens"]:
            status, body = 401, "Unauthorized"
        elif state["upload_failures"]:
            status = state["upload_failures"].pop(0)
            body = {403: "Forbidden: the identity has no access to the deployment container",
                    409: "Conflict: a deployment is in progress"}.get(status, "error")
        elif not (data and data.startswith("@") and os.path.getsize(data[1:]) > 0):
            status, body = 400, "no package"
        else:
            status, body = 202, ""
            state["uploaded"] = True
        state["publish"].append(status)
    elif url.endswith("/api/health"):
        status, body = (200, '{"status":"ok"}') if state["uploaded"] else (503, "")
        state["health"].append(status)
    elif url.endswith("/credentials"):
        key = state["app"]["keys"].get("adf")
        if not key or header.get("x-functions-key") != key:
            status, body = 401, ""
        else:
            m = re.search(r"/api/connections/([^/]+)/([^/]+)/credentials$", url)
            cred = {"client_id": "bc_" + secrets.token_hex(8), "client_secret": "bcs_" + secrets.token_urlsafe(32),
                    "integration": m.group(1), "connection": m.group(2),
                    "created_at": "2026-11-30T18:00:00Z", "expires_at": None}
            state.setdefault("credentials", []).append(cred)
            status, body = 201, json.dumps(cred)
    elif url.endswith("/consent-link"):
        key = state["app"]["keys"].get("adf")
        if not key or header.get("x-functions-key") != key:
            status, body = 401, ""
        else:
            m = re.search(r"/api/connections/([^/]+)/([^/]+)/consent-link$", url)
            status = 201
            body = json.dumps({"url": f"https://{state['app']['name']}.azurewebsites.net/api/auth/start/{m.group(1)}?link=cl_{secrets.token_hex(8)}",
                               "expires_at": "2026-12-01T17:00:00Z"})
    save(state)
    if out_file:
        with open(out_file, "w", encoding="utf-8") as f:
            f.write(body)
    if write_out:
        sys.stdout.write(write_out.replace("%{http_code}", f"{status:03d}"))
    return 0


def main():
    tool, argv = sys.argv[1], sys.argv[2:]
    record(tool, argv)
    if tool == "az":
        az(argv)
    elif tool == "curl":
        sys.exit(curl(argv))
    elif tool == "sleep":
        pass
    else:
        sys.exit(f"unknown tool {tool}")


if __name__ == "__main__":
    main()
