// Alerts on the broker's events (see the README, Operations): an action group that e-mails the
// operator, and a scheduled query rule over the event lines in Application Insights that fires for
// connection.reauthorization_required and integration.misconfigured. Deployed by main.bicep when
// deploy.sh is given --alert-email.
//
// Under the Functions host each stdout line of the broker is a `traces` row whose `message` is the
// JSON line, unparsed (azure-functions-host#6637): the query parses it with parse_json(message).
// host.json excludes traces from adaptive sampling, so no event line is sampled away.

@description('Where alerts are e-mailed.')
param alertEmail string

@description('Region of the scheduled query rule (the Application Insights component\'s).')
param location string

@description('Short lowercase prefix for resource names.')
param namePrefix string

@description('Name suffix shared with the other resources.')
param nameSuffix string

@description('Resource id of the Application Insights component the Function App logs to.')
param applicationInsightsId string

@description('Tags for every resource.')
param tags object = {}

// The event lines that need a person; one alert per event, integration and connection.
var eventQuery = '''
traces
| where message startswith "{"
| extend e = parse_json(message)
| extend event = tostring(e.event)
| where event in ("connection.reauthorization_required", "integration.misconfigured")
| project timestamp, event, integration = tostring(e.integration), connection = tostring(e.connection), error = tostring(e.error), event_id = tostring(e.event_id)
'''

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${namePrefix}-broker-${nameSuffix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take('broker${namePrefix}', 12)
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource eventAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-broker-events-${nameSuffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'oauth-broker: a connection needs a new consent, or an integration is misconfigured'
    description: 'An event line connection.reauthorization_required (open the consent link from the webhook, or create one with POST /api/connections/{integration}/{connection}/consent-link) or integration.misconfigured (fix the client credentials) was logged.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: eventQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'event'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'integration'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'connection'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    // ARM validates a log alert's query when the rule is created; next to an Application Insights
    // component created in the same deployment that validation has failed on the first run and
    // passed on a re-run (Azure/azure-resource-manager-schemas#567). The query is checked offline
    // instead (tests/check_alerts.py, tests/api/alert_query.rs).
    skipQueryValidation: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
output alertRuleId string = eventAlert.id
