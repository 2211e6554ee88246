-- Argo CD health check for smtp.reconciler.dev ExternalSmtp and OAuth2Provider.
-- Follows kstatus: a status that describes an older generation is Progressing; Stalled=True
-- is Degraded (only a change by the user helps); Ready=True for the current generation is
-- Healthy; Reconciling=True (a test in flight, or a retryable failure such as a Secret that
-- does not exist yet) is Progressing; any other Ready=False is Degraded.
local hs = {}
local function find(conditions, ctype)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == ctype then return c end
  end
  return nil
end
local function text(c)
  if c == nil then return "" end
  local msg = c.reason or ""
  if c.message ~= nil and c.message ~= "" then msg = msg .. ": " .. c.message end
  return msg
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the smtpctl operator to reconcile"
  return hs
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for generation " .. generation .. " to be reconciled"
  return hs
end
local ready = find(status.conditions, "Ready")
local stalled = find(status.conditions, "Stalled")
local reconciling = find(status.conditions, "Reconciling")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
  return hs
end
if ready ~= nil and ready.status == "True" and
   (generation == nil or ready.observedGeneration == nil or ready.observedGeneration >= generation) then
  hs.status = "Healthy"
  hs.message = text(ready)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling)
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end
hs.status = "Progressing"
hs.message = text(ready)
return hs
