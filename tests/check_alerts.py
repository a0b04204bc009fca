"""Offline checks of the alerts on the broker's events (called by tests/check_infra.py):

- infra/alerts.bicep has an action group that e-mails its alertEmail parameter, and a scheduled query
  rule (a log alert) on the Application Insights component, wired to that action group;
- the rule's query reads `traces`, parses the message with parse_json(message) (the Functions host
  passes a custom handler's stdout line unparsed), selects exactly connection.reauthorization_required
  and integration.misconfigured (event types the broker defines, in src/domain/event.rs), and reads
  only fields the broker writes on its event lines (the `tracing::info!` that emits them in
  src/events/mod.rs); the API test tests/api/alert_query.rs runs the same query over real log lines;
- every property the two resources set exists in Azure's model of that type and API version
  (azure-mgmt-monitor 7.0.0, whose operations send exactly these API versions), with tests/arm_models.py
  as for main.bicep;
- infra/main.bicep deploys it when alertEmail is set, scoped to its Application Insights component, and
  infra/deploy.sh passes --alert-email through as alertEmail;
- host.json keeps traces out of adaptive sampling (so an event line is never sampled away);
- docs/operations.md shows the rule's query as it is.
"""

import json
import os
import re

from checklib import check

# Each alert resource type and API version → (model module, model class, the operations module
# whose client sends that API version). azure-mgmt-monitor 7.0.0 has one API version per
# operation group, so the operations module proves the model is of the template's version.
MONITOR_MODELS = {
    ("Microsoft.Insights/actionGroups", "2023-01-01"):
        ("azure.mgmt.monitor.models", "ActionGroupResource", "azure.mgmt.monitor.operations._action_groups_operations"),
    ("Microsoft.Insights/scheduledQueryRules", "2023-12-01"):
        ("azure.mgmt.monitor.models", "ScheduledQueryRuleResource",
         "azure.mgmt.monitor.operations._scheduled_query_rules_operations"),
}

ALERTED = {"connection.reauthorization_required", "integration.misconfigured"}


def unwrap(body):
    while isinstance(body, dict) and "config" in body and ("condition" in body or "loop_type" in body):
        body = body["config"]
    return body


def event_types(root):
    text = open(os.path.join(root, "src", "domain", "event.rs"), encoding="utf-8").read()
    return set(re.findall(r'=> "((?:connection|integration)\.[a-z_]+)"', text))


def event_line_fields(root):
    """Field names of the log line every event is (the tracing call with the "event" message)."""
    text = open(os.path.join(root, "src", "events", "mod.rs"), encoding="utf-8").read()
    m = re.search(r"tracing::info!\(\s*event = (.*?)\"event\"\s*\)", text, re.S)
    if not m:
        return set()
    return {"event"} | set(re.findall(r"^\s*(\w+) = ", m.group(1), re.M))


def check_models(doc):
    import importlib

    import arm_models

    for symbol, r in sorted(doc.get("resources", {}).items()):
        where = f"{symbol} ({r['type']}@{r.get('api_version')})"
        entry = MONITOR_MODELS.get((r["type"], r.get("api_version")))
        if not check(entry is not None, f"{where} has a model in azure-mgmt-monitor (MONITOR_MODELS)"):
            continue
        module, cls_name, operations = entry
        try:
            models = arm_models.Models(module)
            ops = open(importlib.import_module(operations).__file__, encoding="utf-8").read()
        except ImportError as e:
            check(False, f"{where}: azure-mgmt-monitor imports ({e})")
            continue
        sent = set(re.findall(r'_params\.pop\("api-version", "([^"]+)"\)', ops))
        check(sent == {r["api_version"]}, f"{where}: the SDK's operations send api-version {sorted(sent)}")
        errors = []
        arm_models.check_object(models, models.cls(cls_name), unwrap(r["config"]), symbol, errors,
                                envelope=arm_models.BICEP_ENVELOPE)
        check(not errors, f"{where}: every property exists in {cls_name}@{r['api_version']}"
              + "".join(f"\n       {e}" for e in errors))
    # Self-test: a misspelt property of the rule is caught.
    models = arm_models.Models("azure.mgmt.monitor.models")
    errors = []
    arm_models.check_object(models, models.cls("ScheduledQueryRuleResource"),
                            {"properties": {"evaluationFrequncy": "PT5M"}}, "selftest", errors)
    check(bool(errors), "the model check rejects a misspelt scheduled query rule property (self-test)")


def check_alerts(parsed, root):
    path = os.path.join(root, "infra", "alerts.bicep")
    doc = parsed.get(path)
    if not check(doc is not None, "infra/alerts.bicep parsed"):
        return
    check_models(doc)
    groups = {n: unwrap(r["config"]) for n, r in doc["resources"].items()
              if r["type"].lower() == "microsoft.insights/actiongroups"}
    rules = {n: unwrap(r["config"]) for n, r in doc["resources"].items()
             if r["type"].lower() == "microsoft.insights/scheduledqueryrules"}
    if check(len(groups) == 1, "alerts.bicep has one action group"):
        (gname, group), = groups.items()
        receivers = group["properties"].get("emailReceivers", [])
        check([r.get("emailAddress") for r in receivers] == ["alertEmail"],
              "the action group e-mails the alertEmail parameter")
        check(len(group["properties"].get("groupShortName", "")) <= 12 or "take(" in json.dumps(group["properties"]["groupShortName"]),
              "the action group's short name fits 12 characters")
    if not check(len(rules) == 1, "alerts.bicep has one scheduled query rule"):
        return
    (rname, rule), = rules.items()
    props = rule["properties"]
    check(rule.get("kind") == "LogAlert", "the rule is a log search alert (kind LogAlert)")
    check(props.get("scopes") == ["applicationInsightsId"], "the rule is scoped to the Application Insights component")
    actions = json.dumps(props.get("actions", {}))
    check(all(n in actions for n in groups), "the rule notifies the action group")
    criteria = props.get("criteria", {}).get("allOf", [])
    if not check(len(criteria) == 1, "the rule has one condition"):
        return
    query_ref = criteria[0].get("query")
    query = doc.get("variables", {}).get(query_ref, {}).get("value", query_ref)
    check(isinstance(query, str) and query.lstrip().startswith("traces"), "the query reads traces")
    check("parse_json(message)" in query, "the query parses the message with parse_json(message)")
    selected = set(re.findall(r'"((?:connection|integration)\.[a-z_]+)"', query))
    check(selected == ALERTED, f"the query selects exactly {sorted(ALERTED)} (found {sorted(selected)})")
    known = event_types(root)
    for t in sorted(selected):
        check(t in known, f"{t} is an event type the broker emits (src/domain/event.rs)")
    fields = event_line_fields(root)
    check("event" in fields and "integration" in fields, "the broker's event line fields are found in src/events/mod.rs")
    for f in sorted(set(re.findall(r"\be\.(\w+)", query))):
        check(f in fields, f"the query reads e.{f}, a field of the broker's event lines")
    readme = open(os.path.join(root, "docs", "operations.md"), encoding="utf-8").read()
    blocks = re.findall(r"```kusto\n(.*?)```", readme, re.S)
    check(any(b.split() == query.split() for b in blocks), "docs/operations.md shows the rule's query as it is")
    dims = {d["name"] for d in criteria[0].get("dimensions", [])}
    projected = set(re.findall(r"(\w+)\s*=\s*tostring", query)) | {"event"}
    for d in sorted(dims):
        check(d in projected, f"the rule's dimension {d} is a column of the query")
    check(criteria[0].get("operator") == "GreaterThan" and criteria[0].get("threshold") == 0
          and criteria[0].get("timeAggregation") == "Count", "the rule fires on any matching line")

    main = parsed.get(os.path.join(root, "infra", "main.bicep"), {})
    modules = {n: m for n, m in main.get("modules", {}).items() if m.get("detail", {}).get("path") == "alerts.bicep"}
    if check(len(modules) == 1, "main.bicep deploys alerts.bicep as a module"):
        (_, m), = modules.items()
        cond = json.dumps(m["config"].get("condition", {}))
        check("alertEmail" in cond and "empty" in cond, "the alerts module is deployed only when alertEmail is set")
        params = unwrap(m["config"]).get("params", {})
        check(params.get("alertEmail") == "alertEmail", "the module gets main.bicep's alertEmail")
        app_insights = json.dumps(params.get("applicationInsightsId"))
        check('"insights"' in app_insights and '"id"' in app_insights,
              "the module's applicationInsightsId is the app's Application Insights component (insights.id)")
    check("alertEmail" in main.get("parameters", {}), "main.bicep has an alertEmail parameter")
    deploy = open(os.path.join(root, "infra", "deploy.sh"), encoding="utf-8").read()
    check("--alert-email" in deploy and '"alertEmail"' in deploy, "deploy.sh passes --alert-email as alertEmail")

    host = json.load(open(os.path.join(root, "host.json"), encoding="utf-8"))
    sampling = host.get("logging", {}).get("applicationInsights", {}).get("samplingSettings", {})
    excluded = {t.strip() for t in sampling.get("excludedTypes", "").split(";")}
    check(sampling.get("isEnabled") is False or "Trace" in excluded,
          "host.json keeps traces (the event lines) out of adaptive sampling")
