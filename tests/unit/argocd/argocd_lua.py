"""Argo CD's Lua resource customizations, run the way Argo CD runs them (util/lua/lua.go).

Argo CD embeds gopher-lua (Lua 5.1); ``lupa.lua51`` is the reference Lua 5.1. What a script
sees is emulated from Argo CD's ``runLuaWithResourceActionParameters`` for scripts installed
through argocd-cm (``useOpenLibs`` false, the default there):

* the globals ``obj`` (the live object) and ``actionParams`` (empty: no parameters here);
* the base library, ``table``, and ``require("os")`` returning the *safe* os module (only
  ``os.date`` and ``os.time``). Argo CD registers that module under the name of the table
  library (``OpenSafeOs``), so the global ``os`` does not exist: scripts must ``require``
  it, as upstream's Rollout and Deployment restart actions do. ``require`` of anything else
  fails; there is no ``string``, ``math``, ``io`` or ``debug`` library, and no string
  methods (the string metatable comes with the string library).

Results are converted as Argo CD does: the returned table is JSON-encoded like gopher-json
(an empty table is ``[]``), health statuses outside Argo CD's set become ``Unknown`` /
"Lua returned an invalid health status", discovery results become ``ResourceAction``s, and an
action's returned object goes through ``cleanReturnedObj`` (empty maps that Lua turned into
``[]`` are restored).

Checks follow Argo CD's ``TestLuaHealthScript`` and ``TestLuaResourceActionsScript``, and are
stricter where those are lax: discovery results must equal the expected list (Argo CD only
checks that each result is in it) and an action's output must equal the expected object
(Argo CD's diff ignores fields the output has and the expectation lacks). Like Argo CD's
test normalizer for time-stamped restart fields, the ``kubetune.io/restart`` annotation is
compared after checking that it holds the current UTC time.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from lupa import lua51

REPO = Path(__file__).resolve().parents[3]
CUSTOMIZATIONS = REPO / "charts" / "kubetune" / "argocd" / "resource_customizations"
FINETUNEJOB = CUSTOMIZATIONS / "kubetune.io" / "FineTuneJob"

HEALTH_CODES = ("Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing")
INVALID_HEALTH = "Lua returned an invalid health status"
RESTART_ANNOTATION = "kubetune.io/restart"

# Argo CD's strftime (util/lua/oslib_safe.go): the C flags it maps, as Go layouts, written
# here as the Python equivalents.
_DATE_FLAGS = {
    "a": "mon",  # Go's map holds the literal "mon" (not a layout)
    "A": "%A",
    "b": "%b",
    "B": "%B",
    "c": "%d %b %y %H:%M %Z",
    "d": "%d",
    "F": "%Y-%m-%d",
    "H": "%H",
    "I": "%I",
    "m": "%m",
    "M": "%M",
    "p": "%p",
    "P": "%p",
    "S": "%S",
    "x": "%H/%M/%S",
    "X": "%H:%M:%S",
    "y": "%y",
    "Y": "%Y",
    "z": "%z",
    "Z": "%Z",
}

_SANDBOX = """
local obj, os_date, os_time = ...
local safe_os = {date = os_date, time = os_time}
local tbl = {
  concat = table.concat, insert = table.insert, maxn = table.maxn,
  remove = table.remove, sort = table.sort, getn = table.getn,
  date = os_date, time = os_time,   -- OpenSafeOs registers into the table module
}
local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, print = print, rawequal = rawequal, rawget = rawget, rawset = rawset,
  select = select, tonumber = tonumber, tostring = tostring, type = type,
  unpack = unpack, xpcall = xpcall, getmetatable = getmetatable,
  setmetatable = setmetatable, _VERSION = _VERSION,
  table = tbl, obj = obj, actionParams = {},
}
env._G = env
env.require = function(name)
  if name == "os" then return safe_os end
  error("module " .. tostring(name) .. " not found", 2)
end
return env
"""


class LuaScriptError(Exception):
    """The script raised (the message as Argo CD reports it)."""


def _lua_date(fmt: str | None = None, when: float | None = None) -> Any:
    fmt = "%c" if fmt is None else str(fmt)
    utc = fmt.startswith("!")
    fmt = fmt.lstrip("!")
    t = datetime.fromtimestamp(time.time() if when is None else float(when), UTC)
    if not utc:
        t = t.astimezone()
    if fmt.startswith("*t"):
        raise LuaScriptError("os.date('*t') is not emulated")
    out: list[str] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%" and i + 1 < len(fmt):
            flag = fmt[i + 1]
            if flag in _DATE_FLAGS:
                out.append(t.strftime(_DATE_FLAGS[flag]))
            elif flag == "w":
                out.append(str((t.weekday() + 1) % 7))
            elif flag == "%":
                out.append("%")
            else:
                out.append("%" + flag)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class ArgoLua:
    """One Lua 5.1 state per script run, as Argo CD creates one LState per execution."""

    def run(self, script: str, obj: dict[str, Any]) -> Any:
        lua = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False)
        lua.execute('getmetatable("").__index = nil')  # no string library: no methods
        env = lua.execute(_SANDBOX, self._to_lua(lua, obj), _lua_date, lambda *a: int(time.time()))
        fn = lua.globals().loadstring(script, "=script")
        if isinstance(fn, tuple):  # (nil, message): a syntax error
            raise LuaScriptError(str(fn[1]))
        lua.globals().setfenv(fn, env)
        try:
            result = fn()
        except lua51.LuaError as exc:
            # Argo CD drops the stack trace of a runtime error (lua.go runLua...).
            raise LuaScriptError(str(exc).split("\nstack traceback:")[0]) from exc
        return self._from_lua(result)

    def _to_lua(self, lua: Any, value: Any) -> Any:
        # util/lua/lua.go decodeValue: maps and arrays become tables, numbers LNumber.
        if isinstance(value, dict):
            table = lua.table()
            for k, v in value.items():
                if v is not None:
                    table[k] = self._to_lua(lua, v)
            return table
        if isinstance(value, list):
            table = lua.table()
            for i, v in enumerate(value, start=1):
                table[i] = self._to_lua(lua, v)
            return table
        if isinstance(value, datetime):  # PyYAML reads unquoted timestamps as datetimes
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        return value

    def _from_lua(self, value: Any) -> Any:
        # gopher-json Encode: an empty table is [], keys 1..n an array, string keys an object.
        if lua51.lua_type(value) == "table":
            keys = list(value.keys())
            if not keys:
                return []
            if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys):
                n = len(keys)
                if sorted(int(k) for k in keys) != list(range(1, n + 1)):
                    raise LuaScriptError("cannot encode a sparse array")
                return [self._from_lua(value[i]) for i in range(1, n + 1)]
            if not all(isinstance(k, str) for k in keys):
                raise LuaScriptError("cannot encode mixed or invalid key types")
            return {k: self._from_lua(value[k]) for k in keys}
        if lua51.lua_type(value) is not None:
            raise LuaScriptError(f"cannot encode a Lua {lua51.lua_type(value)}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


# -- Argo CD's conversions -----------------------------------------------------------------------
def health_from_lua(result: Any) -> dict[str, str]:
    """ExecuteHealthLua: the returned table as a HealthStatus (status, message)."""
    if result is None or result == []:
        return {"status": "", "message": ""}
    if not isinstance(result, dict):
        raise LuaScriptError(f"expect table output from Lua script, not {type(result).__name__}")
    status, message = result.get("status", ""), result.get("message", "")
    if not isinstance(status, str) or not isinstance(message, str):
        raise LuaScriptError("health status and message must be strings")
    if status not in HEALTH_CODES:
        return {"status": "Unknown", "message": INVALID_HEALTH}
    return {"status": status, "message": message}


def actions_from_lua(result: Any) -> list[dict[str, Any]]:
    """ExecuteResourceActionDiscovery: name -> ResourceAction (name, params, disabled,
    iconClass, displayName)."""
    if result == []:
        return []
    if not isinstance(result, dict):
        raise LuaScriptError("expect table output from Lua script")
    actions = []
    for name, value in result.items():
        action = {
            "name": name,
            "params": None,
            "disabled": False,
            "iconClass": "",
            "displayName": "",
        }
        if isinstance(value, dict):
            for key in ("params", "disabled", "iconClass", "displayName"):
                if key in value:
                    action[key] = value[key]
            if not isinstance(action["disabled"], bool):
                raise LuaScriptError(f"action {name}: disabled must be a boolean")
        actions.append(action)
    return actions


def normalize_action(entry: dict[str, Any]) -> dict[str, Any]:
    """An expected ResourceAction from action_test.yaml, with Go's zero values filled in."""
    return {
        "name": entry["name"],
        "params": entry.get("params"),
        "disabled": bool(entry.get("disabled", False)),
        "iconClass": entry.get("iconClass", ""),
        "displayName": entry.get("displayName", ""),
    }


def clean_returned_obj(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """lua.go cleanReturnedObj: empty maps of the input that Lua encoded as []."""
    for key, old_value in old.items():
        if key not in new:
            continue
        value = new[key]
        if isinstance(value, dict) and isinstance(old_value, dict):
            new[key] = clean_returned_obj(value, old_value)
        elif isinstance(value, list):
            if isinstance(old_value, dict) and not value:
                new[key] = {}
            elif isinstance(old_value, list):
                new[key] = _clean_returned_array(value, old_value)
    return new


def _clean_returned_array(new: list[Any], old: list[Any]) -> list[Any]:
    for i, value in enumerate(new):
        if i >= len(old):
            break
        if isinstance(value, dict) and isinstance(old[i], dict):
            new[i] = clean_returned_obj(value, old[i])
        elif isinstance(value, list) and isinstance(old[i], list):
            new[i] = _clean_returned_array(value, old[i])
    return new


def plain(value: Any) -> Any:
    """A YAML document as JSON would carry it (timestamps as RFC 3339 strings)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_yaml(path: Path) -> Any:
    return plain(yaml.safe_load(path.read_text()))


# -- the scripts of a customization directory ----------------------------------------------------
@dataclass
class Customization:
    root: Path

    def health(self, obj: dict[str, Any]) -> dict[str, str]:
        script = (self.root / "health.lua").read_text()
        return health_from_lua(ArgoLua().run(script, obj))

    def discover(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        script = (self.root / "actions" / "discovery.lua").read_text()
        return actions_from_lua(ArgoLua().run(script, obj))

    def action(self, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        script = (self.root / "actions" / name / "action.lua").read_text()
        result = ArgoLua().run(script, copy.deepcopy(obj))
        if not isinstance(result, dict):
            raise LuaScriptError("Lua output was not a valid json object")
        return clean_returned_obj(result, obj)


# -- the checks of health_test.yaml and action_test.yaml -----------------------------------------
def check_health_case(custom: Customization, case: dict[str, Any]) -> None:
    obj = load_yaml(custom.root / case["inputPath"])
    expected = {
        "status": case["healthStatus"].get("status", ""),
        "message": case["healthStatus"].get("message", ""),
    }
    got = custom.health(obj)
    assert got == expected, f"{case['inputPath']}: health {got} != expected {expected}"


def check_discovery_case(custom: Customization, case: dict[str, Any]) -> None:
    obj = load_yaml(custom.root / "actions" / case["inputPath"])
    got = sorted(custom.discover(obj), key=lambda a: a["name"])
    expected = sorted((normalize_action(a) for a in case["result"]), key=lambda a: a["name"])
    for action in got:  # Argo CD's own check ...
        assert action in expected, f"{case['inputPath']}: unexpected action {action}"
    assert got == expected, f"{case['inputPath']}: actions {got} != expected {expected}"


def check_action_case(custom: Customization, case: dict[str, Any], now: float) -> None:
    obj = load_yaml(custom.root / "actions" / case["inputPath"])
    want_error = case.get("expectedErrorMessage")
    try:
        got = custom.action(case["action"], obj)
    except LuaScriptError as exc:
        assert want_error, f"{case['action']} on {case['inputPath']} failed: {exc}"
        assert str(exc) == want_error, f"error {str(exc)!r} != expected {want_error!r}"
        return
    assert not want_error, (
        f"{case['action']} on {case['inputPath']}: no error, {want_error!r} expected"
    )
    expected = load_yaml(custom.root / "actions" / case["expectedOutputPath"])
    _normalize_restart(got, expected, now)
    assert got == expected, (
        f"{case['action']} on {case['inputPath']}: output differs from "
        f"{case['expectedOutputPath']}:\n{yaml.safe_dump(got)}"
    )


def _normalize_restart(got: dict[str, Any], expected: dict[str, Any], now: float) -> None:
    """The restart annotation is the time of the action: check it, then compare the rest."""
    value = ((got.get("metadata") or {}).get("annotations") or {}).get(RESTART_ANNOTATION)
    want = ((expected.get("metadata") or {}).get("annotations") or {}).get(RESTART_ANNOTATION)
    if value is None or want is None:
        return
    stamp = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert now - 2 <= stamp <= time.time() + 1, f"{RESTART_ANNOTATION}={value} is not now"
    got["metadata"]["annotations"][RESTART_ANNOTATION] = want
