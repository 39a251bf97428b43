"""Observe → plan → apply for one TTSService: its children and its pods' policy annotations."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from tts_contract import annotations as ann
from tts_operator.api import Api
from tts_operator.builders import Images, Manifest, Owner, build_children, claim_template_name, differs
from tts_operator.childwrites import ChildWrites
from tts_operator.kube import KubeApiError
from tts_operator.spec import TTSServiceSpec
from tts_operator.status import PodInfo
from tts_operator.written import Written

log = logging.getLogger(__name__)


class ForeignChildError(Exception):
    """A child's name is taken by an object another controller (or a person) owns; we never steal it."""


# Kinds whose spec the API server never lets change: a drifted one is deleted and created anew.
IMMUTABLE = frozenset({"ResourceClaimTemplate"})


class StaleChildError(ForeignChildError):
    """The child belongs to a deleted TTSService of the same name: the garbage collector is removing it."""


def owned_part(desired: Manifest) -> Manifest:
    """The fields we set, as a merge patch: labels and owner references, and everything below metadata."""
    meta = desired["metadata"]
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    return {"metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}, **body}


def needs_patch(desired: Manifest, observed: Manifest) -> bool:
    return differs(owned_part(desired), observed)


def _check_owner(desired: Manifest, observed: Manifest) -> None:
    uid = desired["metadata"]["ownerReferences"][0]["uid"]
    refs = (observed.get("metadata") or {}).get("ownerReferences") or []
    controllers = [r for r in refs if r.get("controller")]
    ours = any(r.get("uid") == uid for r in controllers)
    if not ours:
        meta = desired["metadata"]
        owner = desired["metadata"]["ownerReferences"][0]
        if any(r.get("kind") == owner["kind"] and r.get("name") == owner["name"] for r in controllers):
            raise StaleChildError(
                f"{desired['kind']} {meta['namespace']}/{meta['name']} still belongs to a deleted TTSService "
                f"{owner['name']!r}; waiting for the garbage collector to remove it"
            )
        raise ForeignChildError(
            f"a {desired['kind']} named {meta['name']!r} already exists in {meta['namespace']!r} and is not "
            "owned by this TTSService: delete it or rename the TTSService"
        )


def observed_part(body: Any) -> Manifest:
    """What the operator keeps of a watched child (its index value): all it compares, not status or
    managedFields, which are most of an object's bytes and change on their own."""
    meta = body.get("metadata") or {}
    kept = {
        k: meta[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "labels",
            "ownerReferences",
            "deletionTimestamp",
        )
        if k in meta
    }
    rest = {k: v for k, v in body.items() if k not in ("metadata", "status")}
    return {**rest, "metadata": kept}


async def apply_child(
    api: Api,
    desired: Manifest,
    observed: Manifest | None = None,
    *,
    known: bool = False,
    writes: ChildWrites | None = None,
) -> str:
    """Create the child if missing, patch it if it drifted from what we set. Returns what was done.

    `observed` is the child as the watch shows it; `known` says that None means it does not exist (the
    children index), otherwise None means: ask the API server. What the API server answers to a create or
    patch goes to `writes` (the index shows it a moment later)."""
    meta = desired["metadata"]
    if observed is None and not known:
        observed = await api.get(desired["kind"], meta["namespace"], meta["name"])
    if observed is None:
        try:
            _wrote(writes, await api.create(desired))
            return "created"
        except KubeApiError as exc:
            if exc.status != 409:
                raise
        # It exists after all (made by someone else, or by us more than `writes` remembers): compare it.
        observed = await api.get(desired["kind"], meta["namespace"], meta["name"])
        if observed is None:
            return "created"
    _check_owner(desired, observed)
    if not needs_patch(desired, observed):
        return "unchanged"
    if desired["kind"] in IMMUTABLE:
        uid = (observed.get("metadata") or {}).get("uid")
        await api.delete(desired["kind"], meta["namespace"], meta["name"], uid)
        try:
            _wrote(writes, await api.create(desired))
        except KubeApiError as exc:
            if exc.status != 409:  # someone (the child watch) made it meanwhile: the next pass compares it
                raise
        return "replaced"
    _wrote(writes, await api.patch(desired["kind"], meta["namespace"], meta["name"], owned_part(desired)))
    return "patched"


def _wrote(writes: ChildWrites | None, answer: Manifest | None) -> None:
    if writes is not None and answer:
        writes.wrote(observed_part(answer))


async def apply_children(
    api: Api,
    owner: Owner,
    images: Images,
    known: Mapping[str, Iterable[Manifest]] | None = None,
    writes: ChildWrites | None = None,
) -> dict[str, str]:
    """Bring every child to what it should be. `known` maps a kind to its watched children of this owner (the
    children index): compared without a GET, or with what `writes` says the operator made of a child since
    (the index lags behind those writes); without `known`, each child is read from the API server."""
    done: dict[str, str] = {}
    for child in build_children(owner, images):
        name = child["metadata"]["name"]
        if known is None:
            result = await apply_child(api, child, writes=writes)
        else:
            observed = next(
                (o for o in known.get(child["kind"], ()) if (o.get("metadata") or {}).get("name") == name),
                None,
            )
            if writes is not None:
                observed = writes.current(child["kind"], owner.namespace, name, observed)
            result = await apply_child(api, child, observed, known=True, writes=writes)
        done[f"{child['kind']}/{name}"] = result
    if known is not None:
        wanted = {c["kind"] for c in build_children(owner, images)}
        done.update(await _remove_unwanted(api, owner, known, wanted))
    changed = {k: v for k, v in done.items() if v != "unchanged"}
    if changed:
        log.info("%s/%s children: %s", owner.namespace, owner.name, changed)
    return done


async def _remove_unwanted(
    api: Api, owner: Owner, known: Mapping[str, Iterable[Manifest]], wanted: set[str]
) -> dict[str, str]:
    """A claim template left from a spec that no longer asks for one (mode changed away from dra) goes; only
    ours (owned by this TTSService's uid) and only under the name we gave it."""
    done: dict[str, str] = {}
    if "ResourceClaimTemplate" in wanted:
        return done
    for observed in known.get("ResourceClaimTemplate", ()):
        meta = observed.get("metadata") or {}
        refs = meta.get("ownerReferences") or []
        ours = any(r.get("controller") and r.get("uid") == owner.uid for r in refs)
        if ours and meta.get("name") == claim_template_name(owner.name) and not meta.get("deletionTimestamp"):
            await api.delete("ResourceClaimTemplate", owner.namespace, meta["name"], meta.get("uid"))
            done[f"ResourceClaimTemplate/{meta['name']}"] = "deleted"
    return done


def policy_value(spec: TTSServiceSpec) -> str:
    return ann.dump(spec.residency)


def stale_policy_pods(pods: Iterable[PodInfo], wanted: str) -> list[PodInfo]:
    """Pods whose policy annotation is not the service's current policy (terminating pods are left alone)."""
    return [p for p in pods if not p.terminating and p.policy != wanted]


async def sync_policy(api: Api, spec: TTSServiceSpec, pods: Iterable[PodInfo], written: Written) -> int:
    """Patch `tts.residency.dev/policy` on every pod that lacks the current policy; no restart, no rollout."""
    wanted = policy_value(spec)
    count = 0
    for pod in stale_policy_pods((written.effective(p) for p in pods), wanted):
        count += await patch_annotations(api, pod, {ann.POLICY: wanted}, written)
    return count


async def patch_annotations(api: Api, pod: PodInfo, values: dict[str, str | None], written: Written) -> bool:
    """Merge-patch the values the pod does not hold yet (as far as the watch and our own writes tell);
    returns whether a PATCH was sent."""
    values = written.unwritten(pod, values)
    if not values:
        return False
    written.wrote(pod, values)
    log.debug(
        "pod %s (watched at version %s): writing %s", pod.key, getattr(pod, "resource_version", "?"), values
    )
    body: dict[str, Any] = {"metadata": {"annotations": values}}
    try:
        patched = await api.patch("Pod", pod.namespace, pod.name, body)
    except KubeApiError as exc:
        written.unsent(pod, values)
        if exc.status == 404:  # the pod is gone: nothing to tell it
            written.forget(pod.key)
            return False
        raise
    except BaseException:  # e.g. cancelled: whether it arrived is the watch's to tell
        written.unsent(pod, values)
        raise
    written.wrote(pod, values, str((patched.get("metadata") or {}).get("resourceVersion") or ""))
    return True
