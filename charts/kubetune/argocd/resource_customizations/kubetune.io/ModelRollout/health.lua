-- Argo CD health check for kubetune.io/ModelRollout.
--
-- Runs in Argo CD's Lua sandbox as installed from argocd-cm (useOpenLibs false): only the
-- base functions, `table` and a safe `os` (through require) exist -- no `string` or `math`.
--
-- Phases (written by the operator, rollout/state.py):
--   Promoted -> Healthy; RolledBack, Failed -> Degraded (with the abort or refusal reason);
--   Paused -> Suspended (a pause step, or an inconclusive analysis waiting for a person, as
--   Argo Rollouts reports a paused Rollout); Pending, Progressing -> Progressing.
-- The message is status.message ("step 3/5: analysis 2/10 intervals, candidate 10 %").

local hs = {}

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local phase = obj.status.phase
local message = obj.status.message or phase

-- A spec edit the operator has not acted on yet (a new candidate restarts even a finished
-- rollout): the status below describes the previous generation.
local generation = tonumber(obj.metadata.generation)
local observed = tonumber(obj.status.observedGeneration)
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end

if phase == "Promoted" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end

if phase == "RolledBack" then
  hs.status = "Degraded"
  local abort = obj.status.abort
  if abort ~= nil and abort.reason ~= nil then
    hs.message = abort.reason .. ": " .. (abort.message or "")
  else
    hs.message = message
  end
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message
  return hs
end

if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = message
  return hs
end

if phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = message
  return hs
end

hs.status = "Unknown"
hs.message = "unknown phase " .. phase
return hs
