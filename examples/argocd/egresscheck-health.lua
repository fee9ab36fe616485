-- Argo CD health check for netreach.dev/EgressCheck (resource.customizations.health.netreach.dev_EgressCheck).
-- Maps the kstatus conditions the operator writes: Stalled -> Degraded, Reconciling -> Progressing,
-- Ready -> Healthy or Degraded. A check whose change has not been probed yet is Progressing.
local hs = { status = "Progressing", message = "waiting for the first probe run" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "waiting for the operator to see the change"
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
if conditions.Stalled ~= nil and conditions.Stalled.status == "True" then
  return { status = "Degraded", message = conditions.Stalled.message }
end
if conditions.Reconciling ~= nil and conditions.Reconciling.status == "True" then
  return { status = "Progressing", message = conditions.Reconciling.message }
end
if conditions.Ready ~= nil then
  if conditions.Ready.status == "True" then
    return { status = "Healthy", message = conditions.Ready.message }
  end
  return { status = "Degraded", message = conditions.Ready.message }
end
return hs
