"""Least-privilege and first-run rules of the deployment (called by tests/check_infra.py), each with a
self-test that a template or script breaking the rule fails it:

- Key Vault Secrets User is granted only on single secrets (infra/secret-access.bicep: the scope is a
  `Microsoft.KeyVault/vaults/secrets` resource), never on a vault: main.bicep's only vault-scope role
  is the operator's Secrets Officer, no template takes a Data Factory principal for a vault role, and
  deploy.sh grants Data Factory and the app's identity their secrets through secret-access.bicep;
- Data Factory's key is a function-level key on exactly the token functions (the functions whose
  route is token… with authLevel function, from functions/*/function.json), set with
  `PUT …/functions/<function>/keys/adf`; deploy.sh never writes a host key (it only deletes the host
  key adf of earlier versions);
- the broker's Storage Table Data Contributor is scoped to its table
  (`Microsoft.Storage/storageAccounts/tableServices/tables`), not to the account;
- every role assignment's name is guid(<its scope>.id, <its principal id>, <its role>);
- every scheduled query rule sets skipQueryValidation: true (azure-resource-manager-schemas#567);
- host.json keeps the broker's lines (Host.Function.Console, which the alert reads) at Information and
  drops the host's per-invocation traces (Function.<name>) below it;
- infra/names.py gives Key Vault-valid (^[0-9a-zA-Z-]{1,127}$), collision-free (case-insensitively,
  as Key Vault compares names) secret names for integration/connection pairs with '.', '_', '-',
  case differences and 128-character ids.
"""

import glob
import json
import os
import re
import sys

from checklib import check

SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
TABLE_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


def parse(text):
    from pycep import BicepParser

    return BicepParser().parse(text=text)


def dumps(node):
    return json.dumps(node, sort_keys=True)


def body(resource):
    b = resource["config"]
    while isinstance(b, dict) and "config" in b and ("condition" in b or "loop_type" in b):
        b = b["config"]
    return b


def scope_symbol(scope):
    """`table` for `scope: table`, `secrets` for `scope: secrets[i]`."""
    if isinstance(scope, str):
        return scope
    if isinstance(scope, dict) and scope.get("operator", {}).get("type") == "index_accessor":
        return scope["operator"]["operands"]["operand_1"]
    return None


def role_of(doc, props):
    """The role GUID a roleDefinitionId names (through a variable or a `roles.x` object variable)."""
    ref = props.get("roleDefinitionId", {}).get("function", {}).get("parameters", {}).get("resource_name_1")
    variables = doc.get("variables", {})
    if isinstance(ref, str):
        v = variables.get(ref, {}).get("value")
        return v if isinstance(v, str) else ref
    if isinstance(ref, dict) and ref.get("operator", {}).get("type") == "property_accessor":
        ops = ref["operator"]["operands"]
        obj = variables.get(ops["operand_1"], {}).get("value", {})
        if isinstance(obj, dict):
            return obj.get(ops["operand_2"])
    return None


def role_assignments(doc):
    out = {}
    for name, r in doc.get("resources", {}).items():
        if r.get("type") == "Microsoft.Authorization/roleAssignments":
            out[name] = body(r)
    return out


def resource_type(doc, symbol):
    return doc.get("resources", {}).get(symbol, {}).get("type")


# --- rules (each returns its violations) ---------------------------------------------------------


def rule_role_names(doc):
    """guid(<scope>.id, <principal id>, <role>) for every role assignment."""
    bad = []
    for name, ra in role_assignments(doc).items():
        props = ra.get("properties", {})
        g = ra.get("name", {})
        params = g.get("function", {}).get("parameters", {}) if isinstance(g, dict) else {}
        if g.get("function", {}).get("type") != "guid" if isinstance(g, dict) else True:
            bad.append(f"{name}: the name is not a guid(...)")
            continue
        args = [params.get(k) for k in ("base_string", "extra_string_1", "extra_string_2")]
        scope = ra.get("scope")
        want_scope = {"operator": {"type": "property_accessor", "operands": {"operand_1": scope, "operand_2": "id"}}}
        if dumps(args[0]) != dumps(want_scope):
            bad.append(f"{name}: the name's first part is not its scope's id ({dumps(args[0])[:80]})")
        if dumps(args[1]) != dumps(props.get("principalId")):
            bad.append(f"{name}: the name's second part is not its principalId ({dumps(args[1])[:80]})")
        role_ref = props.get("roleDefinitionId", {}).get("function", {}).get("parameters", {}).get("resource_name_1")
        if dumps(args[2]) != dumps(role_ref):
            bad.append(f"{name}: the name's third part is not its role")
    return bad


def rule_secret_scoped(access_doc):
    """secret-access.bicep: Secrets User on Microsoft.KeyVault/vaults/secrets resources only."""
    bad = []
    ras = role_assignments(access_doc)
    if not ras:
        bad.append("secret-access.bicep has no role assignment")
    for name, ra in ras.items():
        role = role_of(access_doc, ra.get("properties", {}))
        symbol = scope_symbol(ra.get("scope"))
        if role != SECRETS_USER:
            bad.append(f"{name}: grants {role}, not Key Vault Secrets User")
        if resource_type(access_doc, symbol) != "Microsoft.KeyVault/vaults/secrets":
            bad.append(f"{name}: its scope {symbol} is not a Key Vault secret")
        if ra.get("properties", {}).get("principalType") != "ServicePrincipal":
            bad.append(f"{name}: principalType is not ServicePrincipal (a managed identity)")
    return bad


def rule_no_vault_scope_reads(main_doc, access_doc):
    """No template grants a role on a whole vault except the operator's Secrets Officer; none takes a
    Data Factory principal for Key Vault."""
    bad = []
    for label, doc in (("main.bicep", main_doc), ("secret-access.bicep", access_doc)):
        for name, ra in role_assignments(doc).items():
            symbol = scope_symbol(ra.get("scope"))
            props = ra.get("properties", {})
            if resource_type(doc, symbol) == "Microsoft.KeyVault/vaults":
                role = role_of(doc, props)
                if role != SECRETS_OFFICER or dumps(props.get("principalId")) != dumps("operatorPrincipalId"):
                    bad.append(f"{label} {name}: {role} on the whole vault {symbol} (only the operator's Secrets Officer may be)")
            if symbol is None and ra.get("scope") is None:
                bad.append(f"{label} {name}: a role assignment at resource-group scope")
            if "dataFactory" in dumps(props.get("principalId")) and resource_type(doc, symbol) != "Microsoft.KeyVault/vaults/secrets":
                bad.append(f"{label} {name}: Data Factory gets a role on something other than a secret")
    for p in main_doc.get("parameters", {}):
        if "dataFactory" in p:
            bad.append(f"main.bicep takes {p}: Data Factory's secrets are granted per secret by secret-access.bicep")
    return bad


def code_lines(text):
    return [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]


def rule_deploy_grants_per_secret(deploy):
    bad = []
    code = "\n".join(code_lines(deploy))
    if re.search(r"^\s*(\S+=\$\()?az role assignment create", code, re.M):
        bad.append("deploy.sh creates role assignments itself (scope not checked): use infra/secret-access.bicep")
    if "-f infra/secret-access.bicep" not in code:
        bad.append("deploy.sh does not deploy infra/secret-access.bicep")
    for who, principal in (("broker", "$identity_principal"), ("data-factory", "$adf_principal")):
        if not re.search(rf'grant_secret_reads {re.escape(who)} "{re.escape(principal)}"', code):
            bad.append(f"deploy.sh does not grant {who} ({principal}) its secrets through secret-access.bicep")
        # Incremental deployments keep the vault-wide role earlier versions declared: it is removed.
        if not re.search(rf'^\s*revoke_vault_wide_reads "{re.escape(principal)}"', code, re.M):
            bad.append(f"deploy.sh does not remove the vault-wide Secrets User of earlier versions from {principal}")
    return bad


def token_functions(root):
    names = set()
    for fj in glob.glob(os.path.join(root, "functions", "*", "function.json")):
        for b in json.load(open(fj, encoding="utf-8"))["bindings"]:
            if b.get("type") == "httpTrigger" and b.get("route", "").split("/")[0] == "token":
                names.add(os.path.basename(os.path.dirname(fj)))
    return names


def rule_token_key_split(main_text, deploy):
    """The token routes are anonymous at the host (they accept Entra ID callers) and the broker checks
    keys there itself: Data Factory's key (broker-function-key) is a token-only key (BROKER_TOKEN_KEYS),
    the admin key (BROKER_API_KEY) another secret, which Data Factory is never granted."""
    bad = []
    settings = dict(re.findall(r"name: '(BROKER_API_KEY|BROKER_TOKEN_KEYS)'\s*\n\s*value: '([^']*)'", main_text))
    if "${functionKeySecretName}" not in settings.get("BROKER_TOKEN_KEYS", ""):
        bad.append("main.bicep's BROKER_TOKEN_KEYS is not the Key Vault reference to functionKeySecretName (Data Factory's key)")
    if "${apiKeySecretName}" not in settings.get("BROKER_API_KEY", ""):
        bad.append("main.bicep's BROKER_API_KEY is not the Key Vault reference to apiKeySecretName")
    api = re.search(r"^var apiKeySecretName = '([^']+)'", main_text, re.M)
    fk = re.search(r"^var functionKeySecretName = '([^']+)'", main_text, re.M)
    if not api or not fk or api.group(1) == fk.group(1):
        bad.append("the admin key and Data Factory's key are not two different secrets")
    code = code_lines(deploy)
    for ln in code:
        if "adf-secrets" in ln and "api_key_secret" in ln:
            bad.append(f"deploy.sh lets Data Factory read the admin key: {ln.strip()[:100]}")
    if not re.search(r'^api_key_secret=' + re.escape(api.group(1) if api else "?") + r'$', deploy, re.M):
        bad.append("deploy.sh's api_key_secret is not main.bicep's apiKeySecretName")
    return bad


def rule_function_level_key(deploy, wanted):
    bad = []
    m = re.search(r'^token_functions="([^"]*)"', deploy, re.M)
    listed = set(m.group(1).split()) if m else set()
    if listed != wanted:
        bad.append(f"deploy.sh's token_functions {sorted(listed)} are not the token functions {sorted(wanted)}")
    code = code_lines(deploy)
    if not any("/functions/$fn/keys/adf?" in ln and "--method put" in ln for ln in code):
        bad.append("deploy.sh does not PUT the key adf on each token function (…/functions/<function>/keys/adf)")
    if not re.search(r"for fn in \$token_functions", deploy):
        bad.append("deploy.sh does not set the key on every function of token_functions")
    for ln in code:
        if "host/default/functionKeys" in ln and "--method delete" not in ln:
            bad.append(f"deploy.sh writes a host key (it opens every function): {ln.strip()[:100]}")
        if re.search(r"functionapp keys set", ln):
            bad.append("deploy.sh sets a host key with az functionapp keys set")
    return bad


def rule_table_scoped(main_doc):
    bad, found = [], 0
    for name, ra in role_assignments(main_doc).items():
        if role_of(main_doc, ra.get("properties", {})) == TABLE_CONTRIBUTOR:
            found += 1
            symbol = scope_symbol(ra.get("scope"))
            if resource_type(main_doc, symbol) != "Microsoft.Storage/storageAccounts/tableServices/tables":
                bad.append(f"{name}: Storage Table Data Contributor on {symbol} ({resource_type(main_doc, symbol)}), not the broker's table")
    if not found:
        bad.append("no Storage Table Data Contributor role for the broker's table")
    return bad


def rule_skip_query_validation(alerts_doc):
    bad, found = [], 0
    for name, r in alerts_doc.get("resources", {}).items():
        if r.get("type") == "Microsoft.Insights/scheduledQueryRules":
            found += 1
            if body(r).get("properties", {}).get("skipQueryValidation") is not True:
                bad.append(f"{name}: skipQueryValidation is not true (azure-resource-manager-schemas#567)")
    if not found:
        bad.append("no scheduled query rule")
    return bad


def effective_level(log_level, category):
    """The host's rule: the longest configured prefix of the category wins, else "default"."""
    best, level = -1, log_level.get("default", "Information")
    for prefix, value in log_level.items():
        if prefix != "default" and (category == prefix or category.startswith(prefix + ".")) and len(prefix) > best:
            best, level = len(prefix), value
    return level


def rule_host_log_levels(host):
    bad = []
    levels = host.get("logging", {}).get("logLevel", {})
    at = {c: LEVELS.index(effective_level(levels, c)) for c in
          ("Host.Function.Console", "Function.token", "Function.token-post", "Function.refresh-timer", "Host.Results")}
    if at["Host.Function.Console"] > LEVELS.index("Information"):
        bad.append("host.json drops the broker's lines (Host.Function.Console below Information): the alert reads them")
    for c in ("Function.token", "Function.token-post", "Function.refresh-timer"):
        if at[c] < LEVELS.index("Warning"):
            bad.append(f"host.json keeps per-invocation host traces ({c} at {LEVELS[at[c]]})")
    if at["Host.Results"] > LEVELS.index("Information"):
        bad.append("host.json drops request telemetry (Host.Results)")
    return bad


# Pairs that a plain substitution would merge, case differences, and the longest ids.
NAME_CASES = [
    ("acme", "a.b"), ("acme", "a_b"), ("acme", "a-b"), ("acme", "A-b"), ("acme", "a-B"),
    ("a-b", "c"), ("a", "b-c"), ("acme", "default"), ("acme", "acme.eu_1"), ("acme", "Acme.EU_1"),
    ("a" * 63, "x" * 128), ("a" * 63, "x" * 127 + "y"), ("a" * 63, "x" * 127 + "Y"), ("a" * 63, "X" * 128),
    ("b" * 63, "x" * 128), ("acme", "_" * 0 + "z" + "._" * 63 + "z"), ("acme", "z" + "_." * 63 + "z"),
]


def rule_secret_names(fn):
    bad, seen = [], {}
    for integration, connection in NAME_CASES:
        try:
            n = fn(integration, connection)
        except Exception as e:  # a refusal of a valid pair is a violation too
            bad.append(f"{integration}/{connection[:20]}…: refused ({e})")
            continue
        if not re.fullmatch(r"[0-9a-zA-Z-]{1,127}", n):
            bad.append(f"{integration}/{connection[:20]}…: {n[:40]}… ({len(n)} characters) is not a Key Vault name")
        if n != fn(integration, connection):
            bad.append(f"{integration}/{connection[:20]}…: not deterministic")
        key = n.lower()
        if key in seen and seen[key] != (integration, connection):
            bad.append(f"{seen[key]} and {(integration, connection[:20])} share the secret {n[:40]}…")
        seen[key] = (integration, connection)
    return bad


# --- the checks and their self-tests -------------------------------------------------------------


def mutated(text, old, new, label):
    if old not in text:
        check(False, f"self-test {label}: the text to break is in the file ({old[:60]!r})")
        return None
    return text.replace(old, new, 1)


def expect_violation(rule, broken, label):
    if broken is None:
        return
    try:
        violations = rule(broken)
    except Exception as e:  # a rule that crashes on a broken input has not caught it
        violations = []
        print(f"     ({label}: {type(e).__name__}: {e})")
    check(bool(violations), f"self-test: {label} fails the rule")


def check_least_privilege(root):
    infra = os.path.join(root, "infra")
    main_text = open(os.path.join(infra, "main.bicep"), encoding="utf-8").read()
    access_text = open(os.path.join(infra, "secret-access.bicep"), encoding="utf-8").read()
    alerts_text = open(os.path.join(infra, "alerts.bicep"), encoding="utf-8").read()
    deploy = open(os.path.join(infra, "deploy.sh"), encoding="utf-8").read()
    host_text = open(os.path.join(root, "host.json"), encoding="utf-8").read()
    main_doc, access_doc, alerts_doc = parse(main_text), parse(access_text), parse(alerts_text)
    wanted = token_functions(root)
    check(wanted == {"token", "token-post"}, f"the token functions are token and token-post ({sorted(wanted)})")

    def report(label, violations):
        check(not violations, label + "".join(f"\n       {v}" for v in violations))

    report("Key Vault Secrets User is granted on single secrets only (secret-access.bicep)", rule_secret_scoped(access_doc))
    report("no role on a whole vault but the operator's Secrets Officer; no Data Factory role on a vault",
           rule_no_vault_scope_reads(main_doc, access_doc))
    report("deploy.sh grants the app's identity and Data Factory their secrets through secret-access.bicep",
           rule_deploy_grants_per_secret(deploy))
    report("Data Factory's key is a function key on the token functions only; deploy.sh writes no host key",
           rule_function_level_key(deploy, wanted))
    report("the broker checks Data Factory's token-only key and the admin key, two secrets; Data Factory never reads the admin key",
           rule_token_key_split(main_text, deploy))
    report("the broker's Storage Table Data Contributor is scoped to its table", rule_table_scoped(main_doc))
    for label, doc in (("main.bicep", main_doc), ("secret-access.bicep", access_doc)):
        report(f"{label}: role assignment names are guid(scope, principal id, role)", rule_role_names(doc))
    report("alerts.bicep: the log alert sets skipQueryValidation: true", rule_skip_query_validation(alerts_doc))
    report("host.json keeps the broker's lines and drops per-invocation host traces", rule_host_log_levels(json.loads(host_text)))
    sys.path.insert(0, infra)
    from names import credential_secret_name

    report("infra/names.py: Key Vault-valid, collision-free secret names ('.', '_', case, 128 characters)",
           rule_secret_names(credential_secret_name))
    check(credential_secret_name.__module__ == "names" and "names.py credential-secret" in deploy,
          "deploy.sh names pipeline-credential secrets with infra/names.py (the same function as the ADF assets)")

    # Self-tests: each rule fails a template or script that breaks it.
    expect_violation(lambda t: rule_secret_scoped(parse(t)),
                     mutated(access_text, "scope: secrets[i]", "scope: vault", "vault scope"),
                     "secret-access.bicep granting Secrets User on the vault")
    expect_violation(lambda t: rule_secret_scoped(parse(t)),
                     mutated(access_text, "var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'",
                             "var keyVaultSecretsUser = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'", "officer"),
                     "secret-access.bicep granting Secrets Officer")
    vault_role = """
param dataFactoryPrincipalId string = ''
resource dataFactorySecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(dataFactoryPrincipalId)) {
  name: guid(vault.id, dataFactoryPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: dataFactoryPrincipalId
    principalType: 'ServicePrincipal'
  }
}
"""
    expect_violation(lambda t: rule_no_vault_scope_reads(parse(t), access_doc), main_text + vault_role,
                     "main.bicep giving Data Factory Secrets User on the vault")
    expect_violation(rule_deploy_grants_per_secret,
                     mutated(deploy, 'grant_secret_reads data-factory "$adf_principal"',
                             'az role assignment create --role "Key Vault Secrets User" --assignee "$adf_principal"', "cli grant"),
                     "deploy.sh granting Data Factory with az role assignment create")
    expect_violation(rule_deploy_grants_per_secret,
                     mutated(deploy, 'revoke_vault_wide_reads "$adf_principal"\n', '\n', "no revoke"),
                     "deploy.sh leaving Data Factory's vault-wide role of earlier versions")
    expect_violation(lambda t: rule_function_level_key(t, wanted),
                     mutated(deploy, '/functions/$fn/keys/adf?', '/host/default/functionKeys/adf?', "host key"),
                     "deploy.sh setting adf as a host key")
    expect_violation(lambda t: rule_function_level_key(t, wanted),
                     mutated(deploy, 'token_functions="token token-post"', 'token_functions="token token-post consent-link"', "extra"),
                     "deploy.sh giving Data Factory's key to consent-link too")
    expect_violation(lambda t: rule_token_key_split(t, deploy),
                     mutated(main_text, "secrets/${apiKeySecretName}/", "secrets/${functionKeySecretName}/", "same key"),
                     "main.bicep making Data Factory's key the admin key")
    expect_violation(lambda t: rule_token_key_split(main_text, t),
                     mutated(deploy, 'echo "$function_key_secret" >>"$workdir/adf-secrets"',
                             'echo "$function_key_secret" >>"$workdir/adf-secrets"; echo "$api_key_secret" >>"$workdir/adf-secrets"', "adf admin"),
                     "deploy.sh letting Data Factory read the admin key")
    expect_violation(lambda t: rule_table_scoped(parse(t)),
                     mutated(main_text, "  scope: table\n", "  scope: storage\n", "account scope"),
                     "main.bicep scoping the table role to the storage account")
    expect_violation(lambda t: rule_role_names(parse(t)),
                     mutated(main_text, "guid(table.id, identity.properties.principalId,", "guid(table.id, identity.id,", "name"),
                     "a role assignment named from the identity's resource id")
    expect_violation(lambda t: rule_role_names(parse(t)),
                     mutated(main_text, "guid(table.id, identity.properties.principalId,", "guid(storage.id, identity.properties.principalId,", "scope"),
                     "a role assignment named from another scope")
    expect_violation(lambda t: rule_skip_query_validation(parse(t)),
                     mutated(alerts_text, "    skipQueryValidation: true\n", "", "skip"),
                     "alerts.bicep without skipQueryValidation")
    expect_violation(lambda t: rule_host_log_levels(json.loads(t)),
                     mutated(host_text, '"default": "Warning"', '"default": "Information"', "default"),
                     "host.json at Information for every category")
    expect_violation(lambda t: rule_host_log_levels(json.loads(t)),
                     mutated(host_text, '"Host.Function.Console": "Information"', '"Host.Function.Console": "Warning"', "console"),
                     "host.json dropping the broker's lines")
    expect_violation(rule_secret_names,
                     lambda i, c: re.sub(r"[^A-Za-z0-9-]", "-", f"broker-cred-{i}-{c}"),
                     "the substitution deploy.sh used before (tr -c 'A-Za-z0-9' '-')")
    expect_violation(rule_secret_names, lambda i, c: f"broker-cred-{i}-{c}",
                     "the verbatim name the ADF linked service used before")
