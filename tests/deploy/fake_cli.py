#!/usr/bin/env python3
"""Recording fakes of the Azure CLI (`az`), `curl` (calls to the app and its SCM site) and `sleep`.

Azure cannot be reached from here, so infra/deploy.sh runs against these: every call is appended to
$FAKE_LOG as {"tool", "argv"} and answered from a scenario state ($FAKE_STATE, JSON) that persists
across calls and across runs of the script, like a resource group does. The answers follow the Azure
CLI's documented behaviour where it matters to the script:

- `az account get-access-token` answers a JWT whose payload carries `aud` (the resource asked for,
  ARM by default), `oid` (the signed-in principal's object id) and `idtyp`, for a user, a service
  principal or a managed identity (`az login --identity`: `az account show` says user.type
  servicePrincipal, user.name systemAssignedIdentity, and Graph (`az ad ...`) answers nothing);
- resource providers (`az provider show/register`): a new subscription has few registered; commands
  of an unregistered namespace fail with MissingSubscriptionRegistration; registering needs
  `<ns>/register/action` on the subscription (AuthorizationFailed otherwise); a template deployment
  registers the namespaces of what it deploys;
- `az keyvault list-deleted` needs `Microsoft.KeyVault/locations/deletedVaults/read` on the
  subscription (AuthorizationFailed for a deployer with rights on the resource group only);
- `az resource show` of a missing secret fails with (ResourceNotFound), exit 3; the scenario can make
  it fail transiently (InternalServerError / TooManyRequests, exit 1) a number of times;
- `az functionapp keys set/list` answer redacted values (Azure CLI PR #27611, issue #31991); the
  ARM key APIs through `az rest` (WebApps_CreateOrUpdateFunctionSecret, ..._HostSecret, ListHostKeys,
  DeleteHostSecret) take and answer real values; a function's key API fails NotFound until a package
  that has the function is deployed (functions are synced by a deployment);
- `az deployment group show` of a failed deployment has no outputs; of a missing one exits 3;
- `az deployment group create` of main.bicep fails like ARM when a soft-deleted vault holds the name
  (ConflictError), and creates the vault otherwise (with no secrets of its own, public or private as
  privateNetwork says); of secret-access.bicep it records a Key Vault Secrets User assignment per
  secret, scoped to the secret, and fails (ResourceNotFound) if a secret does not exist yet;
- Key Vault data-plane calls (`az keyvault secret ...`) fail (Forbidden) until a successful
  deployment has granted the deploying user Key Vault Secrets Officer, and for a few more calls while
  that role assignment propagates (as RBAC does); with privateNetwork they fail from here
  (ForbiddenByConnection: public network access is disabled);
- One Deploy (`POST https://<scm>/api/publish`) answers the statuses the scenario lists, then 202,
  and requires `Authorization: Bearer <a token az issued for https://appservice.azure.com>`; the
  accepted deployment then shows in `GET /api/deployments/latest` (Kudu's DeployResult: status 0-2
  while pending/building/deploying, 3 failed, 4 succeeded, status_text, log_url) and ends as the
  scenario says (succeeds after one poll, fails, or stays in progress); only a succeeded deployment
  changes the code that runs;
- the app answers /api/health 200 only while code from a succeeded deployment runs and its identity
  may read the encryption key (a Key Vault reference); the admin routes (consent-link, credentials)
  are anonymous at the host (they accept Entra ID callers) and the broker checks them: they take only
  BROKER_API_KEY, the Key Vault reference to broker-api-key (resolved only when the app's identity may
  read that secret), never a host key, a function key or Data Factory's token key;
- `az account show --query tenantId` answers the tenant of the signed-in identity.
"""

import base64
import json
import os
import re
import secrets
import sys
import urllib.parse
import uuid

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
    "provider show": {"--namespace", "-n", "--expand"},
    "provider register": {"--namespace", "-n", "--wait", "--consent-to-permissions", "--management-group-id",
                          "--accept-terms"},
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
    "role assignment list": {"--all", "--assignee", "--include-classic-administrators", "--include-groups",
                             "--include-inherited", "--resource-group", "-g", "--role", "--scope",
                             "--fill-principal-name", "--fill-role-definition-name"},
    "role assignment delete": {"--assignee", "--ids", "--include-inherited", "--resource-group", "-g", "--role",
                               "--scope", "--yes", "-y"},
}
# Options that take no value (everything else in AZ_OPTIONS takes one).
FLAGS = {"--all", "--include-classic-administrators", "--include-groups", "--include-inherited", "--yes", "-y",
         "--wait", "--no-wait", "--what-if", "--rollback-on-error", "--only-show-errors", "--debug", "--verbose",
         "--include-response-body", "--skip-authorization-header", "--disabled", "--consent-to-permissions",
         "--accept-terms"}
ARM = "https://management.core.windows.net/"
APP_SERVICE = "https://appservice.azure.com"
# What a template deployment of main.bicep registers (the namespaces of what it deploys).
TEMPLATE_NAMESPACES = ["Microsoft.Web", "Microsoft.Storage", "Microsoft.KeyVault", "Microsoft.ManagedIdentity",
                       "Microsoft.OperationalInsights", "Microsoft.Insights"]
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
# The functions the package the scenarios deploy has (functions/*), and their routes' auth levels.
FUNCTIONS = ["auth-callback", "auth-link", "auth-start", "connection", "connections", "consent-link", "credential",
             "credentials", "health", "oauth2-token", "openapi", "refresh-timer", "status", "token", "token-post"]


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
            rest = argv[n:]
            i = 0
            while i < len(rest):
                if rest[i].startswith("-") and rest[i] not in FLAGS:
                    if i + 1 >= len(rest):
                        fail(f"argument {rest[i]}: expected one argument", 2)
                    i += 2
                elif rest[i].startswith("-"):
                    i += 1
                else:
                    fail(f"unrecognized arguments: {rest[i]}", 2)
            return
    fail(f"'{' '.join(words)}' is not an az command deploy.sh is known to use", 2)


def b64url(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def principal(state):
    login = state.get("login", "user")
    return {"user": ("user", "ops@example.com"), "sp": ("servicePrincipal", "8a6d2a4e-0c6e-4e61-9d39-1c1b7d0e2f11"),
            "mi": ("servicePrincipal", "systemAssignedIdentity")}[login]


def require_provider(state, ns):
    if state["providers"].get(ns) != "Registered":
        fail(f"(MissingSubscriptionRegistration) The subscription is not registered to use namespace '{ns}'. "
             "See https://aka.ms/rps-not-found for how to register subscriptions.")


def secret_id(state, rg, vault, name):
    return f"/subscriptions/{state['subscription']}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}/secrets/{name}"


TENANT = "72f988bf-0000-4000-8000-000000000002"
IDENTITY_CLIENT_ID = "cccccccc-1111-4222-8333-444444444444"


def can_read_secret(state, principal_id, vault, name):
    """Key Vault RBAC: Secrets User (or Officer) at the secret's scope or above."""
    v = state["vaults"].get(vault)
    if not v or name not in v["secrets"]:
        return False
    sid = secret_id(state, v["rg"], vault, name).lower()
    for ra in state["role_assignments"]:
        if ra["principal"] == principal_id and ra["role"] in (SECRETS_USER, SECRETS_OFFICER) and sid.startswith(ra["scope"].lower()):
            return True
    return False


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
        utype, uname = principal(state)
        return out({"id": sub, "user.type": utype, "user.name": uname, "tenantId": TENANT}.get(q, None) if q else
                   {"id": sub, "user": {"type": utype, "name": uname}}, argv)
    if cmd.startswith("account set"):
        return None
    if cmd.startswith("account get-access-token"):
        resource = (opt(argv, "--resource") or ARM).rstrip("/")
        if resource == APP_SERVICE and state.get("appservice_audience_unsupported"):
            fail(f"Audience {APP_SERVICE} is not a supported MSI token audience.")
        claims = {"aud": resource, "tid": TENANT, "oid": state["oid"],
                  "idtyp": "user" if state.get("login", "user") == "user" else "app"}
        token = b64url({"typ": "JWT", "alg": "RS256"}) + "." + b64url(claims) + "." + secrets.token_urlsafe(24)
        state["tokens"].append(token)
        state.setdefault("token_aud", {})[token] = resource
        save(state)
        if opt(argv, "--query") == "accessToken":
            return out(token, argv)
        return out({"accessToken": token, "expiresOn": "2026-12-01 18:00:00.000000", "expires_on": 1796148000,
                    "subscription": sub, "tenant": claims["tid"], "tokenType": "Bearer"}, argv)
    if cmd.startswith("ad signed-in-user show"):
        if state.get("login", "user") != "user":
            fail("/me request is only valid with delegated authentication flow.")
        return out(state["oid"], argv)
    if cmd.startswith("provider show"):
        ns = opt(argv, "-n", "--namespace")
        st = state["providers"].get(ns, "NotRegistered")
        return out(st if opt(argv, "--query") == "registrationState" else {"namespace": ns, "registrationState": st}, argv)
    if cmd.startswith("provider register"):
        ns = opt(argv, "-n", "--namespace")
        if state["providers"].get(ns) != "Registered":
            if not state.get("subscription_rights", True):
                fail(f"(AuthorizationFailed) The client '{principal(state)[1]}' with object id '{state['oid']}' does not "
                     f"have authorization to perform action '{ns}/register/action' over scope '/subscriptions/{sub}' "
                     "or the scope is invalid. If access was recently granted, please refresh your credentials.")
            state["providers"][ns] = "Registered"
            state.setdefault("registered", []).append(ns)
            save(state)
        return out(None, argv)
    if cmd.startswith("functionapp list-flexconsumption-locations"):
        require_provider(state, "Microsoft.Web")
        return out(state["flex_regions"], argv)
    if cmd.startswith("group create"):
        state["groups"][opt(argv, "-n", "--name")] = opt(argv, "-l", "--location")
        save(state)
        return out(None, argv)

    if cmd.startswith("keyvault list-deleted"):
        require_provider(state, "Microsoft.KeyVault")
        if not state.get("subscription_rights", True):
            fail(f"(AuthorizationFailed) The client '{principal(state)[1]}' with object id '{state['oid']}' does not have "
                 "authorization to perform action 'Microsoft.KeyVault/locations/deletedVaults/read' over scope "
                 f"'/subscriptions/{sub}' or the scope is invalid.")
        return out([{"name": n, "properties": {"location": v["location"], "vaultId":
                    f"/subscriptions/{sub}/resourceGroups/{v['rg']}/providers/Microsoft.KeyVault/vaults/{n}"}}
                    for n, v in state["deleted_vaults"].items()], argv)
    if cmd.startswith("keyvault list"):
        require_provider(state, "Microsoft.KeyVault")
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
        if v.get("private"):
            fail("(ForbiddenByConnection) Public network access is disabled and request is not from a trusted service "
                 "nor via an approved private link.")
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
            if state.get("arm_secret_errors", 0) > 0:
                state["arm_secret_errors"] -= 1
                state["arm_secret_errors_seen"] = state.get("arm_secret_errors_seen", 0) + 1
                save(state)
                fail(["(InternalServerError) Encountered internal server error. Please try again later.",
                      "(TooManyRequests) The request is being throttled."][state["arm_secret_errors"] % 2])
            if vault in state["vaults"] and name in state["vaults"][vault]["secrets"]:
                return out(secret_id(state, rg, vault, name), argv)
            fail(f"(ResourceNotFound) The Resource 'Microsoft.KeyVault/vaults/{vault}/secrets/{name}' under resource group '{rg}' was not found.", 3)
        if opt(argv, "--resource-type") == "Microsoft.DataFactory/factories" or "/Microsoft.DataFactory/factories/" in (opt(argv, "--ids") or ""):
            require_provider(state, "Microsoft.DataFactory")
            ids = opt(argv, "--ids")
            for f in state.get("factories", []):
                fid = f"/subscriptions/{sub}/resourceGroups/{f['rg']}/providers/Microsoft.DataFactory/factories/{f['name']}"
                if ids == fid or (not ids and f["rg"] == rg and f["name"] == opt(argv, "-n", "--name")):
                    q = opt(argv, "--query")
                    return out(fid if q == "id" else f["principal"] if q == "identity.principalId" else {"id": fid}, argv)
            fail("(ResourceNotFound) The Resource 'Microsoft.DataFactory/factories/...' was not found.", 3)
        fail("(ResourceNotFound) resource not found", 3)

    if cmd.startswith("deployment group create"):
        params_file = opt(argv, "-p", "--parameters")
        with open(params_file[1:], encoding="utf-8") as f:
            params = json.load(f)["parameters"]
        template = opt(argv, "-f", "--template-file")
        if template.endswith("secret-access.bicep"):
            return deploy_secret_access(state, rg, params, argv)
        state["deployments"].append({k: v["value"] for k, v in params.items() if k != "integrationSecrets"})
        state["prefix"] = params["namePrefix"]["value"]
        name = vault_name(state)
        for ns in TEMPLATE_NAMESPACES + (["Microsoft.Network"] if params.get("privateNetwork", {}).get("value") else []):
            state["providers"][ns] = "Registered"
        if name in state["deleted_vaults"] and name not in state["vaults"]:
            state["deployment"] = {"state": "Failed", "outputs": None}
            save(state)
            fail(f"(ConflictError) A vault with the same name already exists in deleted state. You need to either recover or purge existing key vault. Vault name: {name}")
        state["vaults"].setdefault(name, {"rg": rg, "location": params["location"]["value"], "secrets": {}, "deleted_secrets": {}})
        state["vaults"][name]["private"] = bool(params.get("privateNetwork", {}).get("value"))
        for k, value in params["integrationSecrets"]["value"].items():
            write_secret(state, name, k.lower().replace("_", "-"), value)
        if state.get("deploy_fails"):
            state["deploy_fails"] = False
            state["deployment"] = {"state": "Failed", "outputs": None}
            save(state)
            fail("(DeploymentFailed) At least one resource deployment operation failed.")
        operator = params["operatorPrincipalId"]["value"]
        if operator:
            vid = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}"
            add_role(state, vid, operator, SECRETS_OFFICER)
            if operator == state["oid"] and not state.get("operator_role"):
                state["operator_role"] = True
                state["role_delay"] = state.get("role_delay_after_grant", 0)
        app = f"{state['prefix']}-broker-{state['suffix'][:6]}"
        state["deployment"] = {"state": "Succeeded", "outputs": {
            "functionAppName": app, "functionAppHostName": f"{app}.azurewebsites.net",
            "publicUrl": f"https://{app}.azurewebsites.net", "redirectUri": f"https://{app}.azurewebsites.net/api/auth/callback",
            "keyVaultName": name, "keyVaultUri": f"https://{name}.vault.azure.net",
            "encryptionKeysSecretName": "broker-encryption-keys", "functionKeySecretName": "broker-function-key",
            "apiKeySecretName": "broker-api-key", "identityPrincipalId": state["identity_principal"],
            "identityClientId": IDENTITY_CLIENT_ID,
            "brokerAudience": (params.get("entraAudience", {}).get("value") or IDENTITY_CLIENT_ID)
            if params.get("entraTenantId", {}).get("value") else ""}}
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
        return rest(state, argv)

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
    if cmd.startswith("role assignment list"):
        # Assignments at the scope (and below it); --include-inherited would add those above.
        scope = (opt(argv, "--scope") or "").lower()
        return out([role_view(state, ra) for ra in state["role_assignments"] if ra["scope"].lower().startswith(scope)], argv)
    if cmd.startswith("role assignment delete"):
        ids = opt(argv, "--ids")
        before = len(state["role_assignments"])
        state["role_assignments"] = [ra for ra in state["role_assignments"] if role_view(state, ra)["id"] != ids]
        if len(state["role_assignments"]) == before:
            fail(f"(RoleAssignmentNotFound) The role assignment '{ids}' is not found.", 3)
        save(state)
        return out(None, argv)
    fail(f"fake az: unexpected call: az {' '.join(argv)}", 2)


def role_view(state, ra):
    """A role assignment as `az role assignment list` shows it."""
    return {"id": f"{ra['scope']}/providers/Microsoft.Authorization/roleAssignments/{ra['name']}", "name": ra["name"],
            "principalId": ra["principal"], "principalType": "ServicePrincipal", "scope": ra["scope"],
            "roleDefinitionId": f"/subscriptions/{state['subscription']}/providers/Microsoft.Authorization/roleDefinitions/{ra['role']}",
            "type": "Microsoft.Authorization/roleAssignments"}


def add_role(state, scope, principal_id, role):
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal_id}|{role}"))
    if not any(ra["name"] == name for ra in state["role_assignments"]):
        state["role_assignments"].append({"name": name, "scope": scope, "principal": principal_id, "role": role})


def deploy_secret_access(state, rg, params, argv):
    vault = params["vaultName"]["value"]
    who = params["principalId"]["value"]
    names = params["secretNames"]["value"]
    v = state["vaults"].get(vault)
    for n in names:
        if not v or n not in v["secrets"]:
            save(state)
            fail(f"(ResourceNotFound) The Resource 'Microsoft.KeyVault/vaults/{vault}/secrets/{n}' under resource group '{rg}' was not found.", 3)
    for n in names:
        add_role(state, secret_id(state, rg, vault, n), who, SECRETS_USER)
    state.setdefault("access_deployments", []).append({"name": opt(argv, "-n", "--name"), "principal": who, "secrets": names})
    save(state)
    return out(None, argv)


def rest_fail(status, code, message):
    reason = {400: "Bad Request", 404: "Not Found", 409: "Conflict"}[status]
    fail(f"{reason}({json.dumps({'error': {'code': code, 'message': message}})})")


def rest(state, argv):
    url = opt(argv, "--url", "-u", "--uri")
    method = (opt(argv, "--method", "-m") or "get").lower()
    body = body_of(argv)
    m = re.search(r"/vaults/([^/]+)/secrets/([^/?]+)\?", url)
    if m and method == "put":
        write_secret(state, m.group(1), m.group(2), body["properties"]["value"])
        state["vaults"][m.group(1)].setdefault("content_types", {})[m.group(2)] = body["properties"].get("contentType")
        save(state)
        return out(None, argv)
    site = re.search(r"/sites/([^/]+)/(.*?)\?api-version=", url)
    if site:
        path, app = site.group(2), state["app"]
        m = re.fullmatch(r"functions/([^/]+)/keys/([^/]+)", path)
        if m and method == "put":
            # KeyInfo {name, value} (azure-mgmt-web 2024-04-01), as az functionapp function keys set sends it.
            if not isinstance(body, dict) or not isinstance(body.get("value"), str) or body.get("name") != m.group(2):
                rest_fail(400, "BadRequest", "The request body must be a KeyInfo {name, value}.")
            if m.group(1) not in app.get("functions", []):
                rest_fail(404, "NotFound", f"Error retrieving function {m.group(1)}: the function does not exist.")
            app.setdefault("function_keys", {}).setdefault(m.group(1), {})[m.group(2)] = body["value"]
            save(state)
            return out({"name": m.group(2), "value": body["value"]}, argv)
        m = re.fullmatch(r"host/default/functionKeys/([^/]+)", path)
        if m and method == "put":
            app["keys"][m.group(1)] = body["value"] if "value" in body else body["properties"]["value"]
            save(state)
            return out(None, argv)
        if m and method == "delete":
            if m.group(1) not in app["keys"]:
                rest_fail(404, "NotFound", f"Key {m.group(1)} not found.")
            del app["keys"][m.group(1)]
            save(state)
            return out(None, argv)
        if path == "host/default/listkeys" and method == "post":
            return out({"masterKey": app.get("master_key"), "functionKeys": dict(app["keys"]), "systemKeys": {}}, argv)
    m = re.search(r"/providers/Microsoft\.DataFactory/factories/([^/]+)/(linkedservices|datasets|pipelines)/([^/?]+)\?", url)
    if m and method == "put":
        state.setdefault("adf_assets", {})[f"{m.group(2)}/{m.group(3)}"] = body
        save(state)
        return out(None, argv)
    fail(f"fake az rest: unexpected {method} {url}", 2)


# --- curl ----------------------------------------------------------------------------------------

# curl's options deploy.sh may use; the first set takes a value (curl --help all).
CURL_VALUE_OPTIONS = {"-o", "--output", "-w", "--write-out", "--data-binary", "-X", "--request", "--max-time", "-m",
                      "-H", "--header", "-D", "--dump-header", "--connect-timeout"}
CURL_FLAGS = {"-s", "--silent", "-S", "--show-error", "-sS", "-f", "--fail", "--version"}


def curl(argv):
    if argv == ["--version"]:
        print(f"curl {os.environ.get('FAKE_CURL_VERSION', '8.14.1')} (x86_64-pc-linux-gnu) libcurl/8.14.1")
        return 0
    state = load()
    headers, out_file, write_out, data, method = [], None, None, None, "GET"
    i, url = 0, None
    while i < len(argv):
        a = argv[i]
        if a in CURL_VALUE_OPTIONS:
            if i + 1 >= len(argv):
                print(f"curl: option {a}: requires parameter", file=sys.stderr)
                return 2
            v = argv[i + 1]
            if a in ("-H", "--header"):
                if v.startswith("@"):
                    with open(v[1:], encoding="utf-8") as f:
                        headers += [line.strip() for line in f if line.strip()]
                else:
                    headers.append(v)
            elif a in ("-o", "--output"):
                out_file = v
            elif a in ("-w", "--write-out"):
                write_out = v
            elif a == "--data-binary":
                data = v
                method = "POST" if method == "GET" else method
            elif a in ("-X", "--request"):
                method = v
            i += 2
        elif a in CURL_FLAGS:
            i += 1
        elif a.startswith("-"):
            print(f"curl: option {a}: is unknown", file=sys.stderr)
            return 2
        else:
            url = a
            i += 1
    header = {h.split(":", 1)[0].strip().lower(): h.split(":", 1)[1].strip() for h in headers if ":" in h}
    status, body = 404, "{}"
    kudu = state.setdefault("kudu", [])
    auth = header.get("authorization", "")
    scm_token_ok = auth.startswith("Bearer ") and state.get("token_aud", {}).get(auth[7:]) == APP_SERVICE
    if "/api/publish" in url:
        if not scm_token_ok:
            status, body = 401, "Unauthorized: a token for https://appservice.azure.com is required"
        elif state["upload_failures"]:
            status = state["upload_failures"].pop(0)
            body = {403: "Forbidden: the identity has no access to the deployment container",
                    409: "Conflict: a deployment is in progress"}.get(status, "error")
        elif not (data and data.startswith("@") and os.path.getsize(data[1:]) > 0):
            status, body = 400, "no package"
        else:
            status, body = 202, ""
            outcome = (state.get("deploy_outcomes") or ["success"]).pop(0) if state.get("deploy_outcomes") else "success"
            kudu.append({"id": secrets.token_hex(16), "status": 0, "status_text": "Receiving changes.", "outcome": outcome,
                         "polls": 0, "deployer": "oauth-broker-deploy", "complete": False, "active": False,
                         "received_time": "2026-12-01T17:00:00Z", "site_name": state["app"]["name"]})
        state["publish"].append(status)
    elif url.endswith("/api/deployments/latest"):
        if not scm_token_ok:
            status, body = 401, "Unauthorized"
        elif not kudu:
            status, body = 404, json.dumps({"Message": "No deployment found."})
        else:
            d = kudu[-1]
            d["polls"] += 1
            if d["outcome"] == "success" and d["polls"] >= 2 and d["status"] != 4:
                d.update(status=4, status_text="", complete=True, active=True, end_time="2026-12-01T17:01:00Z")
                start_code(state)
            elif d["outcome"] == "fail" and d["polls"] >= 2:
                d.update(status=3, complete=True,
                         status_text="Deployment failed. The package could not be extracted: the host did not start (see the log).")
            elif d["status"] not in (3, 4):
                d.update(status=1 if d["polls"] == 1 else 2, status_text="Building and deploying.")
            status = 200
            body = json.dumps({k: v for k, v in d.items() if k not in ("outcome", "polls")}
                              | {"log_url": f"https://{state['app']['name']}.scm.azurewebsites.net/api/deployments/{d['id']}/log"})
    elif url.endswith("/api/health"):
        ok = state["uploaded"] and can_read_secret(state, state["identity_principal"], vault_name(state), "broker-encryption-keys")
        status, body = (200, '{"status":"ok"}') if ok else (503, "")
        state["health"].append(status)
    elif url.endswith("/credentials") or url.endswith("/consent-link"):
        app = state["app"]
        vault = vault_name(state)
        api_keys = state["vaults"].get(vault, {}).get("secrets", {}).get("broker-api-key", [])
        resolved = can_read_secret(state, state["identity_principal"], vault, "broker-api-key")
        if not state["uploaded"] or not resolved or not api_keys or header.get("x-functions-key") != api_keys[-1]:
            status, body = 401, ""
            state.setdefault("admin_refused", []).append(url)
        elif url.endswith("/credentials"):
            m = re.search(r"/api/connections/([^/]+)/([^/]+)/credentials$", url)
            cred = {"client_id": "bc_" + secrets.token_hex(8), "client_secret": "bcs_" + secrets.token_urlsafe(32),
                    "integration": urllib.parse.unquote(m.group(1)), "connection": urllib.parse.unquote(m.group(2)),
                    "created_at": "2026-11-30T18:00:00Z", "expires_at": None}
            state.setdefault("credentials", []).append(cred)
            status, body = 201, json.dumps(cred)
        else:
            m = re.search(r"/api/connections/([^/]+)/([^/]+)/consent-link$", url)
            status = 201
            link = f"https://{app['name']}.azurewebsites.net/api/auth/start/{m.group(1)}?link=cl_{secrets.token_hex(8)}"
            state.setdefault("consent_links", []).append(link)
            body = json.dumps({"url": link, "expires_at": "2026-12-01T17:00:00Z"})
    save(state)
    if out_file:
        with open(out_file, "w", encoding="utf-8") as f:
            f.write(body)
    if write_out:
        sys.stdout.write(write_out.replace("%{http_code}", f"{status:03d}"))
    return 0


def start_code(state):
    """A succeeded deployment: the new code runs, its functions are synced, the host has its keys."""
    state["uploaded"] = True
    app = state["app"]
    app["functions"] = list(FUNCTIONS)
    app["keys"].setdefault("default", "hk_" + secrets.token_urlsafe(32))
    app.setdefault("master_key", "mk_" + secrets.token_urlsafe(32))


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
