-- Argo CD health check for kubetune.io/FineTuneJob.
--
-- Runs in Argo CD's Lua sandbox as installed from argocd-cm (useOpenLibs false): only the
-- base functions, `table` and a safe `os` (through require) exist -- no `string` or `math`
-- library, so this script uses neither.
--
-- Phases (written by the operator, operator/README.md):
--   Succeeded -> Healthy, Failed -> Degraded, Suspended -> Suspended,
--   Pending / Validating / Queued / Running -> Progressing (unless blocked, see below).
-- The message is status.progress.summary ("120/300 (40%)", "queued: waiting for room
-- (1/3 fit)", ...) or the reason and message of the condition that decides the health.

local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local LOWER = {
  Pending = "pending",
  Validating = "validating",
  Queued = "queued",
  Running = "running",
  Suspended = "suspended",
  Succeeded = "done",
}

local function summary(phase)
  local progress = obj.status.progress
  if progress ~= nil and progress.summary ~= nil and progress.summary ~= "" then
    return progress.summary
  end
  return LOWER[phase] or phase
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local phase = obj.status.phase

-- Verdicts first: a finished job is never re-observed by the operator (it stops before
-- recording observedGeneration), so a later spec edit must not turn it back to Progressing.
if phase == "Succeeded" then
  hs.status = "Healthy"
  local done = condition("Succeeded")
  if done ~= nil and done.message ~= nil and done.message ~= "" then
    hs.message = done.message
  else
    hs.message = summary(phase)
  end
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local failed = condition("Failed")
  if failed ~= nil and failed.status == "True" then
    hs.message = describe(failed)
  else
    hs.message = summary(phase)
  end
  return hs
end

-- A spec edit (suspend, resume, a new image, ...) the operator has not acted on yet: the
-- status below describes the previous generation.
local generation = tonumber(obj.metadata.generation)
local observed = tonumber(obj.status.observedGeneration)
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = summary(phase)
  return hs
end

if phase ~= "Pending" and phase ~= "Validating" and phase ~= "Queued" and phase ~= "Running" then
  hs.status = "Unknown"
  hs.message = "unknown phase " .. phase
  return hs
end

-- Not finished, but blocked by something only a person (or the cluster's owner) can fix:
-- Degraded, so that it shows up red and Argo CD notifications fire, instead of a job that
-- looks "Progressing" for ever. Health is recomputed on every change: once the cause is
-- fixed the operator clears the condition and the job is Progressing again.
--
-- * PodCreationFailed=True: the API server refuses the job's pods (a ServiceAccount that
--   does not exist, a full ResourceQuota). The operator retries, but nothing changes until
--   someone creates the account or frees/raises the quota. Argo CD treats a ReplicaSet's
--   ReplicaFailure condition (the same situation) as Degraded.
-- * Admitted GangNeverFits / NoNodeFits: the gang could not run even on an empty cluster
--   (too many nodes, resources no node has, a nodeSelector or taints nothing matches);
--   only more/other nodes or a smaller job help.
-- * Admitted GangUnschedulable: the released gang was not placed within the job's own
--   schedulingTimeoutSeconds (pods released, retried later). Like a Deployment past its
--   progressDeadlineSeconds, which Argo CD reports Degraded although it keeps trying.
-- * Validated / Running with a kubelet waiting reason (CreateContainerConfigError,
--   ImagePullBackOff, ...): a missing Secret/ConfigMap key or an image that cannot be
--   pulled, as Argo CD's own Pod health check reports Degraded.
--
-- Progressing (moving on by itself): WaitingForCapacity (other kubetune jobs hold the
-- room; the gang runs when they finish), GangPending / WaitingForQueue (Kueue), Restarting
-- after a retryable failure (bounded by backoffLimit, which fails the job), ResourceConflict
-- WaitingForGarbageCollection. Mentioned in the message but still Progressing:
-- ProgressKnown=False (rank 0's progress cannot be read: training goes on, and a single
-- failed read sets it, so Degraded would flap and page people) and UpdatesPending (spec
-- edits that apply to the next attempt: the documented behaviour, not a fault).
local BLOCKED_ADMISSION = {
  GangNeverFits = true,
  NoNodeFits = true,
  GangUnschedulable = true,
}
local CANNOT_START = {
  CreateContainerConfigError = true,
  CreateContainerError = true,
  ImagePullBackOff = true,
  ErrImagePull = true,
  InvalidImageName = true,
  ErrImageNeverPull = true,
}

local refused = condition("PodCreationFailed")
if refused ~= nil and refused.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(refused)
  return hs
end

local admitted = condition("Admitted")
if admitted ~= nil and admitted.status ~= "True" and BLOCKED_ADMISSION[admitted.reason] then
  hs.status = "Degraded"
  hs.message = describe(admitted)
  return hs
end

local validated = condition("Validated")
if validated ~= nil and validated.status == "Unknown" and CANNOT_START[validated.reason] then
  hs.status = "Degraded"
  hs.message = describe(validated)
  return hs
end

local running = condition("Running")
if running ~= nil and running.status == "False" and CANNOT_START[running.reason] then
  hs.status = "Degraded"
  hs.message = describe(running)
  return hs
end

hs.status = "Progressing"
local message = summary(phase)
if phase == "Running" then
  local known = condition("ProgressKnown")
  if known ~= nil and known.status == "False" then
    message = message .. "; progress unknown: " .. describe(known)
  end
end
local pending = condition("UpdatesPending")
if pending ~= nil and pending.status == "True" then
  message = message .. "; updates pending: " .. (pending.message or "")
end
hs.message = message
return hs
