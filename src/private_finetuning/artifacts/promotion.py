"""Promotion: which evaluated adapter version the inference server serves.

Training publishes adapters (``adapter/current``); evaluation judges the current one and, only when
every configured gate passes, promotes it. A promotion is an artifact of its own on the
fine-tuned-model volume (``promotion/current/promotion.json``): the exact adapter version and its
digest, the base model it was trained on, the evaluation report that approved it, who promoted it,
when and why, and the served model the evaluation judged (the OpenVINO IR with the adapter merged in,
its weights and inference precision), which the CPU server serves and nothing else. Links in the
adapter and served-model folders (``promoted``, ``promoted-previous``) keep those versions from being
pruned. A failing gate changes nothing, so the previous promotion goes on being served.
``pft promote`` and ``pft rollback`` re-point it by hand; every change is a new promotion version,
so the history stays on the volume.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from private_finetuning.artifacts.store import (
    ADAPTER,
    EVALUATION,
    MANIFEST,
    PROMOTION,
    SERVED_MODEL,
    Artifact,
    ArtifactWriter,
    Manifest,
    hold_reference,
    open_artifact,
    verify,
    volume_lock,
)
from private_finetuning.errors import ArtifactError

log = logging.getLogger(__name__)
RECORD = "promotion.json"
PROMOTED, PREVIOUS = "promoted", "promoted-previous"
KEEP_PROMOTIONS = 10  # promotion records are a few hundred bytes: keep a history to roll back through


@dataclass(frozen=True)
class Promotion:
    adapter_version: str  # the version folder under adapter/
    adapter_digest: str
    adapter_name: str
    base_model_digest: str
    report_digest: str | None
    promoted_by: str
    promoted_at: str
    reason: str
    sequence: int = 0  # one more than the promotion it replaced: orders the history within a second
    # The tokenizer (chat template, end-of-turn ids) the adapter was trained with; "" in records made before
    # it was recorded, whose adapter manifest still names it (``tokenizer_digest``).
    base_tokenizer_digest: str = ""
    # The served model (SERVED_MODEL) judged for this adapter: its version and digest on the volume, its weights
    # (int8, fp32) and the inference precision it was judged at (f32, bf16); "" when none was judged.
    served_model_version: str = ""
    served_model_digest: str = ""
    served_weights: str = ""
    served_precision: str = ""

    @property
    def served(self) -> tuple[str, ...]:
        """What a server must serve for this promotion: the adapter on its base and tokenizer, and the judged served
        model at its weights and precision. Two promotions of the same adapter can differ here (one by hand, then the
        evaluation's; int8 judged, then fp32), and each means another model."""
        return (self.adapter_digest, self.base_model_digest, self.base_tokenizer_digest, self.served_model_digest,
                self.served_weights, self.served_precision)

    def tokenizer_digest(self, adapter: Manifest) -> str:
        """The tokenizer the promoted adapter must be served with."""
        return self.base_tokenizer_digest or adapter.source.get("base_tokenizer", {}).get("digest", "")


def current(volume: Path) -> Promotion | None:
    """The promotion in force on a fine-tuned-model volume (verified), or None if nothing is promoted."""
    if not (volume / PROMOTION.artifact / "current").exists():
        return None
    return _read(open_artifact(volume, PROMOTION.artifact, PROMOTION.kind).path)


def _read(path: Path) -> Promotion:
    try:
        return Promotion(**json.loads((path / RECORD).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path / RECORD}: not a promotion record ({exc})") from None


def adapter_of(volume: Path, promotion: Promotion) -> Artifact:
    """The promoted adapter version, verified, and checked to be the very bytes that were promoted."""
    path = volume / ADAPTER.artifact / promotion.adapter_version
    if not path.is_dir():
        raise ArtifactError(f"the promoted adapter version {promotion.adapter_version} is no longer on the volume")
    manifest = verify(path, ADAPTER.kind)
    if manifest.digest != promotion.adapter_digest:
        raise ArtifactError(f"adapter version {promotion.adapter_version} has digest {manifest.digest[:12]}, the "
                            f"promotion names {promotion.adapter_digest[:12]}")
    return Artifact(path, manifest)


def judged_by(served: Manifest) -> str | None:
    """The digest of the evaluation report that judged a served model (recorded in its manifest's source)."""
    return served.source.get("report", {}).get("digest")


def served_model_of(volume: Path, adapter_digest: str, report_digest: str | None) -> Artifact | None:
    """The newest served model built for this adapter and judged by this report that is still on the volume
    (verified), or None; None too without a report: a served model is served only under the report that judged
    it (another report may have judged other weights or another precision)."""
    if report_digest is None:
        return None
    root = volume / SERVED_MODEL.artifact
    versions = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink()),
                      key=lambda p: p.name, reverse=True) if root.is_dir() else []
    for path in versions:
        try:  # the manifest says which adapter it was built for; only that one is hashed (138 MB each)
            manifest = Manifest.from_file(path / MANIFEST)
            if manifest.metadata.get("adapter_digest") != adapter_digest or judged_by(manifest) != report_digest:
                continue
            return Artifact(path, verify(path, SERVED_MODEL.kind))
        except ArtifactError as exc:
            log.warning("skipping a served model that does not verify: %s", exc)
    return None


def served_model(volume: Path, promotion: Promotion) -> Artifact:
    """The served model a promotion names, verified, and checked to be the very bytes that were judged for
    the promoted adapter (ArtifactError otherwise)."""
    path = volume / SERVED_MODEL.artifact / promotion.served_model_version
    if not promotion.served_model_version or not path.is_dir():
        raise ArtifactError(f"the promoted served model {promotion.served_model_version or '(none)'} is not on the "
                            "volume")
    manifest = verify(path, SERVED_MODEL.kind)
    for what, have, want in (("digest", manifest.digest, promotion.served_model_digest),
                             ("adapter", manifest.metadata.get("adapter_digest"), promotion.adapter_digest)):
        if have != want:
            raise ArtifactError(f"the served model {promotion.served_model_version} has {what} {str(have)[:12]}, "
                                f"the promotion names {str(want)[:12]}")
    return Artifact(path, manifest)


def promote(volume: Path, adapter: Artifact, *, report_digest: str | None, by: str, reason: str,
            served: Artifact | None = None) -> Promotion:
    """Make ``adapter`` (one published, verified version) the one that is served.

    ``served`` is the served model the evaluation judged; without it (``pft promote``, ``pft rollback``) the
    newest one on the volume built for this adapter and judged by ``report_digest`` is named, if any: the
    server then serves it, else it fuses the adapter into the base IR and says that it does. A served model
    that ``report_digest`` did not judge is refused (ArtifactError): a retried evaluation whose first try
    died between its report and its served model must not promote one another report judged.

    One promotion at a time per volume (the evaluation, ``pft rollback``, another run): the record read,
    the links and the new record are one step under the volume's promotion lock, so two promotions never
    share a sequence number and ``promoted`` always protects the version the record in force names."""
    version = adapter.path.resolve().name
    on_volume = Manifest.from_file(volume / ADAPTER.artifact / version / MANIFEST)
    if on_volume.digest != adapter.manifest.digest:
        raise ArtifactError(f"adapter version {version} is not the adapter that was judged "
                            f"({on_volume.digest[:12]} != {adapter.manifest.digest[:12]})")
    with volume_lock(volume, "promotion"):
        return _promote_locked(volume, adapter, report_digest=report_digest, by=by, reason=reason, served=served)


def _promote_locked(volume: Path, adapter: Artifact, *, report_digest: str | None, by: str, reason: str,
                    served: Artifact | None) -> Promotion:
    """:func:`promote`'s record and links; the caller holds the volume's promotion lock."""
    version = adapter.path.resolve().name
    before = current(volume)
    served = served or served_model_of(volume, adapter.manifest.digest, report_digest)
    if served is not None and judged_by(served.manifest) != report_digest:
        raise ArtifactError(f"served model {served.path.resolve().name} was judged by report "
                            f"{str(judged_by(served.manifest))[:12]}, not the promoted report "
                            f"{str(report_digest)[:12]}; it is not promoted with it")
    if before is not None and before.adapter_digest == adapter.manifest.digest and \
            before.report_digest == report_digest and \
            before.served_model_digest == (served.manifest.digest if served else ""):
        log.info("adapter %s is already promoted; nothing to do", adapter.manifest.digest[:12])
        return before
    source = adapter.manifest.source
    promotion = Promotion(
        adapter_version=version, adapter_digest=adapter.manifest.digest, adapter_name=adapter.manifest.name,
        base_model_digest=source.get("base_model", {}).get("digest", ""),
        base_tokenizer_digest=source.get("base_tokenizer", {}).get("digest", ""),
        report_digest=report_digest, promoted_by=by, promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        reason=reason, sequence=before.sequence + 1 if before else 1, **_served_fields(served))
    # Protect the versions before the record names them: training's pruning honours these links.
    if before is not None and before.adapter_version != version:
        hold_reference(volume, ADAPTER.artifact, PREVIOUS, before.adapter_version, missing_ok=True)
    hold_reference(volume, ADAPTER.artifact, PROMOTED, version)
    if before is not None and before.served_model_version and before.served_model_version != \
            promotion.served_model_version:
        hold_reference(volume, SERVED_MODEL.artifact, PREVIOUS, before.served_model_version, missing_ok=True)
    if served is not None:
        hold_reference(volume, SERVED_MODEL.artifact, PROMOTED, promotion.served_model_version)
    _record(volume, promotion, by, reason)
    log.info("promoted adapter %s (version %s) by %s: %s", adapter.manifest.digest[:12], version, by, reason)
    return promotion


def _served_fields(served: Artifact | None) -> dict[str, str]:
    if served is None:
        return {}
    meta = served.manifest.metadata
    return {"served_model_version": served.path.resolve().name, "served_model_digest": served.manifest.digest,
            "served_weights": str(meta.get("weights", "")), "served_precision": str(meta.get("precision", ""))}


def _record(volume: Path, promotion: Promotion, by: str, reason: str) -> None:
    """Publish ``promotion`` as the record in force."""
    with ArtifactWriter(volume, PROMOTION.artifact, kind=PROMOTION.kind, stage=by,
                        keep_versions=KEEP_PROMOTIONS) as writer:
        assert writer.path is not None
        (writer.path / RECORD).write_text(json.dumps(asdict(promotion), indent=2) + "\n", encoding="utf-8")
        writer.commit(name=f"{promotion.adapter_name}@{promotion.adapter_version}",
                      source={"adapter": promotion.adapter_digest, "report": promotion.report_digest},
                      metadata={"reason": reason})


def history(volume: Path) -> list[Promotion]:
    """Every promotion still on the volume, newest first."""
    root = volume / PROMOTION.artifact
    out = []
    for path in (p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []:
        try:
            verify(path, PROMOTION.kind)
            out.append(_read(path))
        except ArtifactError as exc:
            log.warning("skipping a promotion record that does not verify: %s", exc)
    return sorted(out, key=lambda p: p.sequence, reverse=True)


def rollback(volume: Path, *, by: str) -> Promotion:
    """Promote again the adapter that was promoted before the current one.

    Decided and recorded under the promotion lock: an evaluation promoting meanwhile is rolled back from,
    never overwritten by a target chosen before it."""
    with volume_lock(volume, "promotion"):
        now = current(volume)
        if now is None:
            raise ArtifactError(f"{volume}: nothing is promoted, so there is nothing to roll back")
        earlier = [p for p in history(volume) if p.adapter_digest != now.adapter_digest]
        if not earlier:
            raise ArtifactError(f"{volume}: no earlier promotion of another adapter is recorded")
        target = earlier[0]
        return _promote_locked(volume, adapter_of(volume, target), report_digest=target.report_digest, by=by,
                               reason=f"rollback from {now.adapter_digest[:12]} to {target.adapter_digest[:12]}",
                               served=None)


def report_for(volume: Path, adapter: Manifest) -> str | None:
    """The digest of the current evaluation report if it evaluated this adapter, else None."""
    try:
        report = open_artifact(volume, EVALUATION.artifact, EVALUATION.kind)
    except ArtifactError:
        return None
    return report.manifest.digest if report.manifest.source.get("adapter", {}).get("digest") == adapter.digest \
        else None
