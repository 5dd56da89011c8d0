-- Argo CD resource actions for kubetune.io/ModelRollout: every action is always listed,
-- disabled where it does not apply (as upstream's Rollout actions do). Each sets one of
-- the annotations the operator acts on and then removes (kubetune.io/promote, abort, retry).
local actions = {}

local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
local active = phase == "Progressing" or phase == "Paused"
local finished = phase == "Promoted" or phase == "RolledBack" or phase == "Failed"

-- kubetune.io/promote=step: end a pause (or an inconclusive analysis) and go to the next step.
actions["promote"] = {
  ["iconClass"] = "fa fa-fw fa-forward",
  ["displayName"] = "Promote to the next step",
  ["disabled"] = not active,
}

-- kubetune.io/promote=full: skip the remaining steps, the candidate gets 100 %.
actions["promote-full"] = {
  ["iconClass"] = "fa fa-fw fa-fast-forward",
  ["displayName"] = "Promote fully",
  ["disabled"] = not active,
}

-- kubetune.io/abort: the candidate's weight goes to 0 and the rollout is RolledBack.
actions["abort"] = {
  ["iconClass"] = "fa fa-fw fa-times-circle",
  ["disabled"] = finished,
}

-- kubetune.io/retry: a RolledBack or Failed rollout starts again from its first step.
actions["retry"] = {
  ["iconClass"] = "fa fa-fw fa-redo",
  ["disabled"] = not (phase == "RolledBack" or phase == "Failed"),
}

return actions
