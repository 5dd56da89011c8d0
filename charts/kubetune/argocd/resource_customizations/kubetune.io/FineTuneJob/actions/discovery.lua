-- Argo CD resource actions for kubetune.io/FineTuneJob: every action is always listed,
-- disabled where it does not apply (as upstream's Rollout and Deployment actions do).
local actions = {}

local suspended = false
if obj.spec ~= nil and obj.spec.runPolicy ~= nil and obj.spec.runPolicy.suspend == true then
  suspended = true
end

local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
local finished = phase == "Succeeded" or phase == "Failed"

-- spec.runPolicy.suspend=true: the operator removes the pods, keeps status and checkpoints.
actions["suspend"] = {
  ["iconClass"] = "fa fa-fw fa-pause",
  ["disabled"] = suspended or finished,
}

-- spec.runPolicy.suspend=false: a new gang resumes from the newest checkpoint.
actions["resume"] = {
  ["iconClass"] = "fa fa-fw fa-play",
  ["disabled"] = not suspended or finished,
}

-- A new kubetune.io/restart annotation value: the operator replaces the gang with a new
-- attempt resuming from the newest checkpoint (not counted against backoffLimit).
actions["restart"] = {
  ["iconClass"] = "fa fa-fw fa-redo",
  ["displayName"] = "Restart from checkpoint",
  ["disabled"] = suspended or not (phase == "Running" or phase == "Queued"),
}

return actions
