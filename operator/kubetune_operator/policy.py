"""The operator's tenant policy: what a FineTuneJob may ask its pods to be.

Creating a FineTuneJob makes the operator create pods in the job's namespace, so without a
policy a FineTuneJob would be a way to run any image as any ServiceAccount, at
``system-node-critical`` priority, on every tainted node. :func:`violations` checks a spec
against the allow-lists of :class:`~kubetune_operator.settings.OperatorSettings`; the
lifecycle fails a violating job (``ForbiddenByPolicy``) before it creates any pod.

Patterns are shell globs (:func:`fnmatch.fnmatchcase`). Two kinds of names are never
admitted by a glob, only when listed literally: priority classes starting with ``system-``
and taint keys in the ``kubernetes.io`` / ``k8s.io`` domains (node lifecycle, control plane).
A toleration without a key (it tolerates every taint) needs ``allow_tolerate_all_taints``.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from kubetune.api.job import FineTuneJobSpec
from kubetune_operator.settings import ENV_PREFIX, OperatorSettings

DEFAULT_SERVICE_ACCOUNT = "default"
SYSTEM_PRIORITY_PREFIX = "system-"
RESERVED_TAINT_DOMAINS = ("kubernetes.io", "k8s.io")


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def _reserved_taint_key(key: str) -> bool:
    prefix, slash, _ = key.partition("/")
    if not slash:
        return False
    return any(prefix == d or prefix.endswith("." + d) for d in RESERVED_TAINT_DOMAINS)


def _setting(name: str) -> str:
    return ENV_PREFIX + name.upper()


def image_allowed(image: str, settings: OperatorSettings) -> bool:
    return _matches(image, settings.image_patterns())


def service_account_allowed(name: str, settings: OperatorSettings) -> bool:
    return _matches(name, settings.allowed_service_accounts)


def priority_class_allowed(name: str, settings: OperatorSettings) -> bool:
    if name.startswith(SYSTEM_PRIORITY_PREFIX):
        return name in settings.allowed_priority_classes
    return _matches(name, settings.allowed_priority_classes)


def toleration_key_allowed(key: str | None, settings: OperatorSettings) -> bool:
    if not key:
        return settings.allow_tolerate_all_taints
    if _reserved_taint_key(key):
        return key in settings.allowed_toleration_keys
    return _matches(key, settings.allowed_toleration_keys)


def violations(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[str]:
    """What ``spec`` asks for that the operator's policy forbids, one sentence each (empty:
    allowed). Each names the setting a platform admin would change."""
    out: list[str] = []
    image = spec.image or settings.trainer_image
    if not image_allowed(image, settings):
        out.append(
            f"image {image!r} is not allowed (allowed: {', '.join(settings.image_patterns())}; "
            f"set by {_setting('allowed_images')})"
        )
    account = spec.service_account_name or DEFAULT_SERVICE_ACCOUNT
    if not service_account_allowed(account, settings):
        out.append(
            f"serviceAccountName {account!r} is not allowed (allowed: "
            f"{', '.join(settings.allowed_service_accounts) or 'none'}; set by "
            f"{_setting('allowed_service_accounts')})"
        )
    res = spec.resources
    if res.priority_class_name and not priority_class_allowed(res.priority_class_name, settings):
        out.append(
            f"priorityClassName {res.priority_class_name!r} is not allowed (allowed: "
            f"{', '.join(settings.allowed_priority_classes) or 'none'}, never system-* unless "
            f"listed by name; set by {_setting('allowed_priority_classes')})"
        )
    for index, toleration in enumerate(res.tolerations):
        if toleration_key_allowed(toleration.key, settings):
            continue
        if not toleration.key:
            out.append(
                f"resources.tolerations[{index}] has no key, so it tolerates every taint "
                f"(set {_setting('allow_tolerate_all_taints')}=true to allow this)"
            )
        else:
            out.append(
                f"resources.tolerations[{index}]: taint key {toleration.key!r} is not allowed "
                f"(allowed: {', '.join(settings.allowed_toleration_keys) or 'none'}, never "
                f"kubernetes.io/k8s.io keys unless listed by name; set by "
                f"{_setting('allowed_toleration_keys')})"
            )
    return out
